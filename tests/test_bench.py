"""Smoke test of bench.py: every section runs at tiny sizes and writes positive numbers (timings are not
asserted — a timed test would flake; the benchmark is a script)."""
import json
import math

import numpy as np
import pytest

import genome
from workshop import bench, evaluation


def test_bench_quick_writes_every_section(tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(bench.SECTIONS) <= set(res)
    rows = res["classes"]["rows"]
    assert [r["id"] for r in rows] == list(range(1, 18))
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert all(r["chunked_s"] > 0 and r["loop_s"] > 0 and r["max_abs_diff"] < 1e-4 for r in res["scan"]["rows"])
    assert all(r["fft_s"] > 0 and r["direct_s"] > 0 and r["rel_diff"] < 1e-4 for r in res["conv"]["rows"])
    t = res["transformer"]
    assert t["decoded_s"] > 0 and t["plain_s"] > 0 and t["params_decoded"] == t["params_plain"]
    assert len(res["decode"]["rows"]) == 17
    assert all(v > 0 for r in res["decode"]["rows"] for k, v in r.items() if k.startswith("ms_per_token"))
    s = res["search"]
    assert "skipped" in s or (s["bookkeeping_s_per_generation"] > 0 and s["generation_s"] > 0)
    assert {t["target"].split(" (")[0] for t in res["targets"]} >= {"Transformer++ decoded / plain Llama step time"}
    v = res["variation"]
    assert v["mutation"] == 0 and 0 <= v["crossover_liv"] <= 1 and v["n"] == 50


def test_bench_efficacy_compares_the_four_arms_and_retrains_their_top_k(tmp_path):
    """The efficacy section at tiny sizes: one seed, the four arms, each run's top-2 and Transformer++
    retrained under 2 seeds; the numbers it reports are recomputed here from the run folders and the
    retraining book, and a second call trains nothing again."""
    import evolve
    from workshop import report
    from workshop import fidelity, runlog

    out, runs = tmp_path / "e.json", tmp_path / "runs"
    assert bench.main(["--quick", "--only", "efficacy", "--seeds", "0", "--efficacy-dir", str(runs), "--out", str(out)]) == 0
    e = json.loads(out.read_text())["efficacy"]
    assert [x["arm"] for x in e["runs"]] == ["nsga2", "random", "nsga2-mf", "random-mf"]
    book = [json.loads(line) for line in (runs / "retrained.jsonl").read_text().splitlines()]
    # a genome in two top-ks trained once per seed and rate
    assert len({(b["key"], b["seed"], b["steps"], b["lr"]) for b in book}) == len(book)
    ppl = {(b["key"], b["seed"], b["steps"], b["lr"]): b["perplexity"] for b in book}
    folders = {"nsga2": "nsga2-liv-seed0", "random": "random-liv-seed0", "nsga2-mf": "nsga2-mf-seed0",
               "random-mf": "random-mf-seed0"}
    for x in e["runs"]:
        rc, records, _ = report.load_run(runs / folders[x["arm"]])
        assert x["candidates"] == len(records) and x["compute"] == report.compute_tokens(rc, records)[1]
        assert bool(rc.rungs) == x["arm"].endswith("-mf") and (x["arm"].endswith("-mf") or x["candidates"] == 3 + 2)
        tpp = x["tpp"]

        def best(key):  # D41: (rate, seed mean) at the lowest seed mean over the run's --final-lrs grid, by brute force
            return min(((lr, float(np.mean([ppl[(key, s, 3, lr)] for s in (0, 1)]))) for lr in rc.rates(rc.final_lrs)),
                       key=lambda p: p[1])
        means = [best(t["key"])[1] for t in x["top"]]
        assert [t["lr"] for t in x["top"]] == [best(t["key"])[0] for t in x["top"]] and len(rc.rates(rc.final_lrs)) == 4
        assert (tpp["lr"], tpp["mean"]) == pytest.approx(best(genome.canonical_str(genome.transformer_pp(rc.depth))))
        assert [t["retrained"][0] for t in x["top"]] == pytest.approx(means) and x["best"] == pytest.approx(min(means))
        assert x["regret"] == pytest.approx(means[0] - min(means))  # the chosen best is the lowest search score
        assert [t["score"] for t in x["top"]] == sorted(t["score"] for t in x["top"])
        assert all(t["cache"] < tpp["cache"] for t in x["top"])  # under Transformer++'s cache
        pts = np.array([[m, math.log10(max(t["cache"], 1))] for m, t in zip(means, x["top"])]).reshape(-1, 2)
        assert x["hv_log"] == pytest.approx(evaluation.hypervolume(pts, (tpp["mean"], math.log10(tpp["cache"]))))
        assert x["new_front"][0] >= 1 and len(x["new_front"]) == rc.generations + 1
        assert x["top_spearman"] == report.spearman([t["score"] for t in x["top"]], means) or len(means) < 2
        laddered = [r for r in records if len(r.get("rungs") or []) == 2]
        assert x["rung_spearman"]["n"] == len(laddered) and (not laddered) == (not rc.rungs)
        top_rung = [r for r in fidelity.top_rung(records) if math.isfinite(r["perplexity"])]
        if rc.rungs:  # the probe: promoted candidates again at each rung, reproducing their archived scores
            assert set(x["probe"]) == {"1", "2"} and all(v["n"] == len(top_rung) for v in x["probe"].values())
            assert x["probe"]["1"]["reproduced"] == 0 and x["probe"]["2"]["reproduced"] == 0
            assert x["probe"]["2"]["rho"] == pytest.approx(1.0) or len(top_rung) < 2
            again = [ppl[(r["key"], 0, 1, rc.lr)] for r in top_rung]
            assert x["probe"]["1"]["rho"] == report.spearman(again, [r["perplexity"] for r in top_rung]) or len(again) < 2
        else:
            assert x["probe"] == {}
        assert x["hv_search"] == pytest.approx(evaluation.hypervolume(
            np.array([r["objectives"] for r in fidelity.top_rung(records)], dtype=float), x["ref_search"]))
    assert e["runs"][0]["welch_mf_below"] is not None and e["runs"][2]["welch_mf_below"] is None
    before = (runs / "retrained.jsonl").read_text()
    assert bench.main(["--quick", "--only", "efficacy", "--seeds", "0", "--efficacy-dir", str(runs), "--out", str(out)]) == 0
    assert (runs / "retrained.jsonl").read_text() == before and json.loads(out.read_text())["efficacy"]["runs"] == e["runs"]


def test_welch_and_the_t_distribution_against_textbook_values_and_an_integral():
    """report.student_t_sf at the two-sided 5% points of t tables, and at fractional df against a
    trapezoid integral of the density; bench.welch against the formula by hand."""
    from workshop import report

    for t, df in [(12.706, 1), (4.303, 2), (2.776, 4), (2.228, 10)]:
        assert report.student_t_sf(t, df) == pytest.approx(0.025, abs=2e-5)
        assert report.student_t_sf(-t, df) == pytest.approx(0.975, abs=2e-5)
    for t, df in [(1.3, 2.7), (0.4, 5.5), (3.1, 3.3)]:
        x = np.linspace(t, t + 400, 400_001)
        y = np.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / np.sqrt(df * np.pi) * (1 + x ** 2 / df) ** (-(df + 1) / 2)
        tail = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
        assert report.student_t_sf(t, df) == pytest.approx(tail, abs=1e-5)
    a, b = [5.0, 5.2, 5.1], [5.6, 5.3, 5.9]
    t, df, p = bench.welch(a, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    assert t == pytest.approx((np.mean(b) - np.mean(a)) / math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)) and p == report.student_t_sf(t, df)
    assert 0 < p < 0.05 and bench.welch(b, a)[2] == pytest.approx(1 - p)


def test_bench_scaling_trains_the_repeated_genomes(tmp_path):
    """The scaling section at tiny sizes: both genomes repeated twice (depth 12), one seed each."""
    out = tmp_path / "s.json"
    assert bench.main(["--quick", "--only", "scaling", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["scaling"]["rows"]
    assert [r["name"] for r in rows] == ["seed-0 winner", "transformer++"]
    assert all(r["depth"] == 12 and r["d_model"] == 32 and r["runs"][0]["status"] == "ok" for r in rows)
    for r in rows:  # D41: each at its best of the 4 rates around the shape's derived rate
        rate = bench.star.derived_rate(32, 12)
        assert sorted(map(float, r["rates"])) == [rate * m for m in (0.25, 0.5, 1.0, 2.0)]
        assert r["mean"] == min(r["rates"].values()) and r["rates"][str(r["lr"])] == r["mean"]


def test_bench_proxies_correlates_every_formula_with_every_measurement(tmp_path):
    out = tmp_path / "p.json"
    assert bench.main(["--quick", "--only", "proxies", "--out", str(out)]) == 0
    p = json.loads(out.read_text())["proxies"]
    assert p["n"] == 3 + 2 and p["rows"][0]["genome"] == str(bench.genome.transformer_pp(6))
    assert set(p["spearman"]) == {"params", "cache_bytes"}
    assert all(len(v) == 6 for v in p["spearman"].values())  # 3 measurements x 2 contexts
    assert p["seconds_per_genome"] > 0 and len(p["stability"]) == 1


def test_bench_fidelity_runs_each_arm_and_retrains_its_selection(tmp_path):
    """The fidelity section at tiny sizes: one arm per fidelity, its compute and its ladder counted."""
    out = tmp_path / "f.json"
    assert bench.main(["--quick", "--only", "fidelity", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["fidelity"]["runs"]
    single, multi = runs
    assert single["candidates"] == 3 + 2 and multi["candidates"] == 3 + 4 and not single["rung_spearman"]
    assert len(multi["rung_spearman"]) == 1 and len(single["new_front"]) == len(multi["new_front"]) == 2
    assert 0 < single["train_tokens"] == 5 * 4 * 4 * 32  # 5 candidates x 4 steps x 4 x 32 tokens
    assert single["regret"] >= 0 and single["best"] == min(t["retrained"][0] for t in single["top"])


def test_bench_recipe_sweeps_the_rate_and_its_numbers_come_from_its_book(tmp_path, capsys):
    """Issue 28 item 1, at the quick sizes: seed 0 over the whole grid, the other seeds near each model's
    seed-0 optimum; the best rate is the lowest seed mean there; the shared rate's loss and the distance
    from Transformer++'s optimum are recomputed here from the book; a second call trains nothing."""
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--only", "recipe", "--out", str(out), "--recipe-dir", str(tmp_path)]) == 0
    r = json.loads(out.read_text())["recipe"]
    book = {}
    for line in (tmp_path / "recipe.jsonl").read_text().splitlines():
        x = json.loads(line)
        book[(x["key"], x["seed"], x["steps"], x["lr"])] = x["perplexity"]
    grid, s = r["grid"], bench.SIZES["quick"]["recipe"]
    assert grid == [0.001, 0.002, 0.004] and r["budgets"] == [2, 4]
    assert [x["name"] for x in r["rows"][:4]] == ["transformer++", "striped-mamba", "random 1", "random 2"]
    assert len({x["genome"] for x in r["rows"]}) == 4  # distinct models
    for x in r["rows"]:
        seed0 = [book[(x["genome"], 0, x["steps"], lr)] for lr in grid]
        assert x["seed0"] == seed0
        near = sorted({lr for i in np.argsort(seed0, kind="stable")[:2] for lr in grid[max(0, i - 1): i + 2]})
        assert [float(k) for k in x["near"]] == near  # the two best seed-0 rates and their neighbours
        means = {lr: np.mean([book[(x["genome"], sd, x["steps"], lr)] for sd in (0, 1)]) for lr in near}
        assert x["best_lr"] == min(means, key=means.get) and math.isclose(x["mean"], means[x["best_lr"]])
        assert x["at_edge"] == (x["best_lr"] in (grid[0], grid[-1]))
        tpp = next(t for t in r["rows"] if t["steps"] == x["steps"] and t["name"] == "transformer++")
        best0 = seed0[grid.index(x["best_lr"])]
        assert math.isclose(x["loss_at_shared"], seed0[grid.index(s["shared"])] / best0 - 1)
        assert math.isclose(x["steps_from_tpp"], math.log(x["best_lr"] / tpp["best_lr"]) / math.log(2.0))
    assert len(book) == 2 * 4 * 3 + sum(len(x["near"]) for x in r["rows"])  # seed 0 everywhere, seed 1 near
    capsys.readouterr()
    assert bench.main(["--quick", "--only", "recipe", "--out", str(out), "--recipe-dir", str(tmp_path)]) == 0
    assert "training: 0 to do" in capsys.readouterr().out


def test_bench_ops_counts_dispatched_operators_independent_of_the_length():
    """Issue 29 item 4's measure: aten operators per training step; one op counts one, and the count of a
    step is the same at two sequence lengths (the launches do not grow with the shape)."""
    import torch

    x = torch.ones(3)
    assert bench.count_ops(lambda: x + x) == (1, {"add": 1})
    s = dict(bench.SIZES["quick"]["ops"])
    short = bench.bench_ops(torch.device("cpu"), s)
    longer = bench.bench_ops(torch.device("cpu"), dict(s, overrides=dict(s["overrides"], seq_len=64)))
    assert [r["name"] for r in short["rows"]] == ["transformer++", "striped-mamba", "Rec-1 + GMemless", "GConv-2 + GMemless"]
    assert [(r["forward_backward"], r["optimizer"]) for r in short["rows"]] == \
        [(r["forward_backward"], r["optimizer"]) for r in longer["rows"]]
    assert all(r["forward_backward"] > 100 and r["optimizer"] > 10 for r in short["rows"])


def test_bench_profile_summarises_steps_per_step():
    """Issue 29 item 6: host ms and kernels per training step from the profiler; on CPU the kernels are the
    aten operators it records, the same per step over 2 steps as over 3, and there is no GPU share."""
    import torch

    s = dict(bench.SIZES["quick"]["profile"])
    two, three = (bench.bench_profile(torch.device("cpu"), dict(s, steps=n)) for n in (2, 3))
    assert [r["name"] for r in two["rows"]] == ["transformer++", "striped-mamba"]
    assert [r["kernels_per_step"] for r in two["rows"]] == [r["kernels_per_step"] for r in three["rows"]]
    assert all(r["kernels_per_step"] > 100 and r["host_ms_per_step"] > 0 and r["gpu_busy_share"] is None
               for r in two["rows"])
