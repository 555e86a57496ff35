"""End-to-end tests of the synthesis command (star.py) at a tiny size: seconds, not minutes."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import star

TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
        "--batch", "4", "--steps", "3", "--population", "4", "--offspring", "3", "--generations", "2",
        "--preset", "cpu", "--final-top", "3"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tmp_path, *extra, name="r"):
    return star.main(TINY + ["--out", str(tmp_path), "--name", name, *extra])


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_repeating(tmp_path, monkeypatch):
    assert run(tmp_path, name="whole") == 0
    whole = read_jsonl(tmp_path / "whole" / "archive.jsonl")

    real, calls = star.evaluate_genome, {"n": 0}

    def dies_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6 + 4 + 2:  # 2 baselines x 3 seeds, 4 initial, then the 2nd offspring of generation 1
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(star, "evaluate_genome", dies_in_generation_1)
    assert run(tmp_path, name="killed") == 130
    part = read_jsonl(tmp_path / "killed" / "archive.jsonl")
    assert len(part) == 4 + 1
    monkeypatch.setattr(star, "evaluate_genome", real)
    calls["n"] = 0
    counting = lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1]
    monkeypatch.setattr(star, "evaluate_genome", counting)
    assert run(tmp_path, "--resume", name="killed") == 0
    assert calls["n"] == len(whole) - len(part)  # no baseline and no finished candidate re-trained
    resumed = read_jsonl(tmp_path / "killed" / "archive.jsonl")
    strip = lambda rs: [(r["genome"], r["key"], r["generation"], r["objectives"]) for r in rs]
    assert strip(resumed) == strip(whole)


@pytest.mark.parametrize("argv,needle", [
    (["--objective", "quality_speed"], "unknown --objective"),
    (["--preset", "huge"], "unknown --preset"),
    (["--explain", "1.1.1.1"], "LIV 1"),
    (["--explain", "99.1.1.1.1"], "class"),
    (["--data", "/nonexistent/corpus.txt"], "--data"),
    (["--d-model", "40"], "head_dim"),
    (["--depth", "5"], "even"),
    (["--resume"], "holds no run"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "x"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x" / "archive.jsonl").exists()


def test_resume_with_another_configuration_is_refused(tmp_path, capsys, monkeypatch):
    d = tmp_path / "r"
    d.mkdir()
    rc = star.run_config(star.build_parser().parse_args(TINY))
    (d / "config.json").write_text(json.dumps(rc))
    (d / "archive.jsonl").write_text("")
    assert run(tmp_path, "--resume", "--steps", "5") == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "steps" in err
    assert (d / "archive.jsonl").read_text() == ""  # nothing written or lost
    assert run(tmp_path) == 2 and "already holds a run" in capsys.readouterr().err


def test_explain_prints_picture_params_and_cache(capsys):
    assert star.main(["--explain", "1.1.1.1.1-9.2.1.2.1", "--d-model", "768"]) == 0
    out = capsys.readouterr().out
    assert "SA-1" in out and "GMemless" in out
    assert "7,276,800 parameters" in out and "12,582,912 bytes" in out


def test_command_line_exit_status_is_real():
    p = subprocess.run([sys.executable, "star.py", "--objective", "nope"], capture_output=True, text=True,
                       cwd=Path(__file__).parent)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown --objective" in p.stderr


def test_selection_rule():
    recs = [dict(key=k, genome=k, status="ok", perplexity=p, params=n, cache_bytes=c)
            for k, p, n, c in [("a", 10, 5, 5), ("b", 9, 20, 1), ("c", 8, 5, 50), ("d", 11, 1, 1), ("e", math.inf, 1, 1)]]
    base = dict(perplexity=9.5, params=10, cache_bytes=10)
    assert [r["key"] for r in star.select_top_k(recs, base, "quality_cache", 8)] == ["b", "a", "d"]
    assert [r["key"] for r in star.select_top_k(recs, base, "quality_size", 2)] == ["c", "a"]
    assert [r["key"] for r in star.select_top_k(recs, base, "quality_size_cache", 8)] == ["a", "d"]
    assert [r["key"] for r in star.select_top_k(recs, base, "quality", 1)] == ["c"]
