"""The Python API (README, "From Python"): the in-memory synthesis, the same with a run folder, and
workers from a script without a __main__ guard."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import star
from workshop import cli, run
from workshop.config import RunConfig, UsageError
from test_golden import PINNED, assert_golden

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository
TINY = dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=3, population=4,
            offspring=3, generations=2, baseline_seeds=2, lr=8e-4)  # test_golden.TINY


@pytest.mark.pinned
def test_synthesize_in_memory_equals_the_run_folder(tmp_path):
    config = RunConfig.make("cpu", **TINY)
    lines = []
    mem = run.synthesize(config, log=lines.append)
    disk = run.synthesize(config, run_dir=tmp_path / "r", log=lambda s: None)
    assert mem.run_dir is None and disk.run_dir == tmp_path / "r" and not list(Path.cwd().glob("runs/*tiny*"))
    strip = lambda rs: [(r["generation"], r["genome"], r["key"], r["objectives"]) for r in rs]  # noqa: E731
    assert strip(mem.records) == strip(disk.records) and len(mem.records) == 10
    assert [r["key"] for r in mem.front] == [r["key"] for r in disk.front] and mem.front
    assert [r["key"] for r in mem.top] == [r["key"] for r in disk.top]
    assert mem.ref_point == disk.ref_point and len(mem.baselines) == 2 * 2 * 3  # names x seeds x rates (D41)
    tpp = next(b for b in mem.baselines if b["name"] == "transformer++")
    assert all(r["cache_bytes"] < tpp["cache_bytes"] for r in mem.top)
    assert [r["perplexity"] for r in mem.top] == sorted(r["perplexity"] for r in mem.top)
    assert any("hypervolume reference point" in s for s in lines)
    if PINNED:
        assert_golden(tmp_path / "r")


def test_api_errors_speak_the_apis_words(tmp_path, capsys):
    """Issue 26: synthesize into a folder that holds a run says resume=True and run_dir, not --resume and
    --name; star.py's line for the same keeps the command line's words."""
    shutil.copytree(HERE / "testdata" / "format1-run", tmp_path / "r")
    with pytest.raises(UsageError) as e:
        run.synthesize(RunConfig.make("cpu", **TINY), run_dir=tmp_path / "r", log=lambda s: None)
    assert "continue it with resume=True or choose another run_dir" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(UsageError) as e:
        run.synthesize(RunConfig.make("cpu", **{**TINY, "generations": 1, "steps": 4}), run_dir=tmp_path / "r",
                        resume=True, given={"steps"}, log=lambda s: None)
    assert "resume=True:" in str(e.value) and "steps = 3" in str(e.value) and "--" not in str(e.value)
    assert cli.main(["--data", "synthetic", "--out", str(tmp_path), "--name", "r"]) == 2
    assert "continue it with --resume or choose another --name" in capsys.readouterr().err


def test_a_bad_config_is_one_usage_error():
    with pytest.raises(UsageError, match="--depth must be even"):
        RunConfig.make("cpu", depth=5)
    with pytest.raises(UsageError, match="no field 'widht'"):
        RunConfig.make("cpu", widht=3)
    with pytest.raises(UsageError, match="--timeout"):
        RunConfig.make("cpu", timeout=float("inf"))


@pytest.mark.slow
def test_workers_from_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from workshop import run
        from workshop.config import RunConfig
        result = run.synthesize(RunConfig.make("cpu", **{TINY!r}), run_dir={str(tmp_path / "r")!r},
                                 workers=2, log=lambda s: None)
        print("best", len(result.records))
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["best", "10"]  # once: the workers did not run the script again
    one = run.synthesize(RunConfig.make("cpu", **TINY), log=lambda s: None)
    strip = lambda rs: sorted((r["generation"], r["genome"], r["objectives"]) for r in rs)  # noqa: E731
    assert strip(json.loads(line) for line in (tmp_path / "r" / "archive.jsonl").read_text().splitlines()) \
        == strip(one.records)  # workers report in any order, with the same results
