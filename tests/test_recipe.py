"""D41: the peak learning rate. Each baseline trains over a rate grid and every comparison uses it at its
best rate by seed mean; --final-steps retrains over a grid; --lr-grid scores each candidate at its best
rate; bad rates are one line."""
from __future__ import annotations

import json
import math

import pytest

import star
from workshop import after, candidate, cli, report
from workshop.config import RunConfig, UsageError

TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
        "--batch", "4", "--steps", "3", "--population", "3", "--offspring", "2", "--generations", "1",
        "--preset", "cpu", "--final-top", "2", "--baseline-seeds", "2", "--objective", "quality_cache"]


def rec(name, lr, seed, ppl, status="ok"):
    return dict(name=name, key=name, lr=lr, seed=seed, perplexity=ppl, status=status, params=1, cache_bytes=1)


def test_each_baseline_is_compared_at_its_best_rate_by_seed_mean_and_an_edge_is_named():
    """The best rate is the lowest seed mean (not the lowest single seed); a failed seed counts as inf;
    a best rate at the grid's lowest or highest rate is flagged and worded."""
    records = [rec("transformer++", 1e-3, 0, 20.0), rec("transformer++", 1e-3, 1, 22.0),   # mean 21
               rec("transformer++", 2e-3, 0, 18.0), rec("transformer++", 2e-3, 1, 26.0),   # mean 22, best seed 18
               rec("transformer++", 4e-3, 0, 23.0), rec("transformer++", 4e-3, 1, 23.0),
               rec("striped-mamba", 1e-3, 0, 30.0), rec("striped-mamba", 1e-3, 1, 30.0),
               rec("striped-mamba", 2e-3, 0, 25.0), rec("striped-mamba", 2e-3, 1, 25.0),
               rec("striped-mamba", 4e-3, 0, 1.0), rec("striped-mamba", 4e-3, 1, math.inf, "diverged")]
    best = star.at_best_rate(records)
    assert [r["lr"] for r in best["transformer++"]] == [1e-3, 1e-3] and best["striped-mamba"][0]["lr"] == 2e-3
    rows = report.rate_groups(records)
    tpp, sm = rows["transformer++"], rows["striped-mamba"]
    assert (tpp["lr"], tpp["perplexity"], tpp["at_edge"]) == (1e-3, 21.0, True)
    assert (sm["lr"], sm["perplexity"], sm["at_edge"]) == (2e-3, 25.0, False)
    assert tpp["rates"] == {1e-3: 21.0, 2e-3: 22.0, 4e-3: 23.0} and sm["rates"][4e-3] == 1.0  # the finite seed's mean
    assert report.rate_words(tpp) == "0.001 (best of 0.001: 21.000, 0.002: 22.000, 0.004: 23.000; at the grid's EDGE)"
    warnings = report.edge_warnings(rows, "--baseline-lrs")
    assert len(warnings) == 1 and "Transformer++" in warnings[0] and "lowest" in warnings[0]
    one = report.rate_groups(records[:2])["transformer++"]  # one rate: no grid, no edge
    assert not one["at_edge"] and report.rate_words(one) == "0.001"


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    argv = TINY + ["--lr-grid", "0.5,1", "--final-steps", "2", "--final-lrs", "0.5,1", "--out", str(out), "--name", "r"]
    assert cli.main(argv) == 0
    return out / "r"


def test_a_candidate_with_lr_grid_is_scored_at_its_best_rate_and_its_weights_reproduce_it(grid_run):
    rc = RunConfig.from_json((grid_run / "config.json").read_text())
    assert rc.lr_grid == (0.5, 1.0) and rc.lr == 1.29e-2
    archive = [json.loads(line) for line in (grid_run / "archive.jsonl").read_text().splitlines()]
    for r in archive:
        scores = {float(k): v for k, v in r["lr_scores"].items()}
        assert sorted(scores) == [rc.lr * 0.5, rc.lr] and r["perplexity"] == min(scores.values())
        assert r["lr"] == min(scores, key=scores.get)
    run = after.read_run(grid_run)
    for w, t in zip(run.weights, run.top):  # retrained at its own rate, the archived score exactly (D24)
        about = candidate.read_weights(grid_run / w["folder"])
        assert about["reproduced"] is True and about["recipe"]["lr"] == t["lr"]
    summary = (grid_run / "summary.md").read_text()
    assert "Each candidate trains at peak learning rates 0.00645, 0.0129 and is scored at its best" in summary
    assert "| lr |" in summary.split("## Pareto front")[1]


def test_the_baselines_and_the_retraining_run_over_their_grids_and_the_summary_names_each_rate(grid_run):
    rc = RunConfig.from_json((grid_run / "config.json").read_text())
    base = [json.loads(line) for line in (grid_run / "baselines.jsonl").read_text().splitlines()]
    assert sorted({(b["name"], b["lr"], b["seed"]) for b in base}) == sorted(
        (n, rc.lr * m, s) for n in ("transformer++", "striped-mamba") for m in (0.5, 1.0, 2.0) for s in (0, 1))
    final = [json.loads(line) for line in (grid_run / "final.jsonl").read_text().splitlines()]
    assert len(final) == (2 + 2) * 2 * 2  # (baselines + top-2) x 2 rates x 2 seeds
    assert {f["lr"] for f in final} == {rc.lr * 0.5, rc.lr}
    summary = (grid_run / "summary.md").read_text()
    rows = report.rate_groups(base)
    for name, row in rows.items():  # the table and the verdict give the best rate, and the grid's seed means
        assert f"| {name} | `{row['key']}` | {report.fmt_mean_std(row)} |" in summary
        assert report.rate_words(row) in summary
    assert f"at its best peak rate {rows['transformer++']['lr']:.3g}" in summary
    assert all(w[9:] in summary for w in report.edge_warnings(rows, "--baseline-lrs"))
    retrained = summary.split("## Retrained for 2 steps")[1]
    for key, row in report.rate_groups(final, "key").items():
        assert report.rate_words(row) in retrained


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "0"], "--lr must be a peak learning rate"),
    (["--lr", "nan"], "--lr must be a peak learning rate"),
    (["--baseline-lrs", ""], "--baseline-lrs must be distinct multiples"),
    (["--baseline-lrs", "1,1"], "--baseline-lrs must be distinct multiples"),
    (["--final-lrs", "0.5,x"], "--final-lrs '0.5,x': give comma-separated multiples"),
    (["--lr-grid", "-1"], "--lr-grid must be distinct multiples"),
    (["--lr-grid", "100"], "--lr-grid must be distinct multiples"),
])
def test_a_bad_rate_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    assert cli.main(TINY + argv + ["--out", str(tmp_path), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_the_presets_rates():
    """D41: cpu measured (Transformer++'s best at 100 steps), gpu derived by the stated rule, paper the paper's."""
    assert RunConfig.make("cpu").lr == 1.29e-2 and RunConfig.make("paper").lr == 8e-4
    assert RunConfig.make("gpu").lr == star.derived_rate(256, 12)
    with pytest.raises(UsageError, match="--lr must be"):
        RunConfig.make("cpu", lr=2.0)


def test_after_retrain_trains_at_one_given_rate_even_after_a_grid_search(grid_run, tmp_path):
    """`after retrain --lr`: one training per seed at that rate, its weights kept (a run searched with
    --lr-grid keeps weights too), the run's rate by default."""
    got = after.retrain(grid_run, "best", steps=2, seeds=[0], out=tmp_path / "a", lr=1e-3, log=lambda s: None)
    assert len(got) == 1 and got[0]["lr"] == 1e-3 and "lr_scores" not in got[0]
    assert candidate.read_weights(got[0]["folder"])["recipe"]["lr"] == 1e-3
    again = after.retrain(grid_run, "best", steps=2, seeds=[0], out=tmp_path / "b", log=lambda s: None)
    assert again[0]["lr"] == 1.29e-2 and candidate.read_weights(again[0]["folder"]) is not None
    assert after.main(["retrain", str(grid_run), "--lr", "0", "--out", str(tmp_path / "c")]) == 2
