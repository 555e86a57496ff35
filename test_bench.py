"""Smoke test of bench.py: every section runs at tiny sizes and writes positive numbers (timings are not
asserted — a timed test would flake; the benchmark is a script)."""
import json

import bench


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


def test_bench_efficacy_compares_both_algorithms(tmp_path):
    """The efficacy section at tiny sizes: one seed, NSGA-II and the random control, one reference point."""
    out = tmp_path / "e.json"
    assert bench.main(["--quick", "--only", "efficacy", "--seeds", "0", "--efficacy-dir", str(tmp_path / "runs"),
                       "--out", str(out)]) == 0
    e = json.loads(out.read_text())["efficacy"]
    (p,) = e["seeds"]
    assert p["nsga2"]["algorithm"] == "nsga2" and p["random"]["algorithm"] == "random"
    assert p["nsga2"]["evaluations"] == p["random"]["evaluations"] == 3 + 2
    assert p["ratio"] == p["nsga2"]["hypervolume"] / p["random"]["hypervolume"] and p["nsga2"]["hypervolume"] > 0
    assert set(p["baselines"]) == {"transformer++", "striped-mamba"}
    assert all(len(b["ppls"]) == 2 for b in p["baselines"].values())


def test_bench_scaling_trains_the_repeated_genomes(tmp_path):
    """The scaling section at tiny sizes: both genomes repeated twice (depth 12), one seed each."""
    out = tmp_path / "s.json"
    assert bench.main(["--quick", "--only", "scaling", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["scaling"]["rows"]
    assert [r["name"] for r in rows] == ["seed-0 winner", "transformer++"]
    assert all(r["depth"] == 12 and r["d_model"] == 32 and r["runs"][0]["status"] == "ok" for r in rows)


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
