"""Measured costs in a run (deployment.py, DESIGN.md D34-D36) with the deterministic stand-in meter: measured
objectives, the measurement log and its kill points, any metric in the summary, picture and --compare,
budgets against brute force, old config.json files."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import evolve
import genome
import star
import workshop.run
from workshop import cli, config, report, runlog
from workshop.config import RunConfig, UsageError

TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32", "--batch", "4",
        "--steps", "2", "--population", "3", "--offspring", "2", "--generations", "1", "--preset", "cpu",
        "--baseline-seeds", "1", "--final-top", "3"]
METER = ["--meter", "standin", "--deploy-width", "32", "--deploy-head-dim", "16", "--deploy-contexts", "64,256"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tmp_path, *extra, name="r"):
    return cli.main(TINY + METER + ["--out", str(tmp_path), "--name", name, *extra])


def strip(records):
    return [(r["genome"], r["key"], r["generation"], r["objectives"], r.get("decode_ms")) for r in records]


def test_a_measured_objective_run_measures_each_genome_once_before_it_is_used(tmp_path):
    assert run(tmp_path, "--objective", "quality_latency") == 0
    d = tmp_path / "r"
    measured = read_jsonl(d / "measurements.jsonl")
    archive, baselines = read_jsonl(d / "archive.jsonl"), read_jsonl(d / "baselines.jsonl")
    keys = [m["key"] for m in measured]
    assert len(keys) == len(set(keys)) == len({r["key"] for r in archive + baselines})
    by_key = {m["key"]: m for m in measured}
    for r in archive + baselines:
        assert r["decode_ms"] == by_key[r["key"]]["metrics"]["decode_ms"] == by_key[r["key"]]["metrics"]["decode_ms@256"]
        assert r["decode_ratio"] == pytest.approx(r["decode_ms"] / by_key[r["key"]]["reference"]["decode_ms"])
    for r in archive:
        assert r["objectives"] == [r["perplexity"], r["decode_ms"]]
    m = measured[0]
    assert m["shape"]["d_model"] == 32 and m["shape"]["contexts"] == [64, 256] and m["threads"] == 1
    assert len(m["raw"]["256"]["decode_ms"]) == m["shape"]["decode_steps"]
    summary = (d / "summary.md").read_text()
    assert "decode_ms" in summary and "Measured (D34)" in summary and (d / "pareto.png").exists()
    # --compare of any metric; a second seed
    assert run(tmp_path, "--objective", "quality_latency", "--seed", "1", name="s1") == 0
    text, rows = report.compare_runs([str(d), str(tmp_path / "s1")])
    assert "decode_ms" in text and len(rows) == 2


def test_the_default_run_measures_nothing_and_record_only_changes_no_objective(tmp_path):
    assert run(tmp_path, name="plain") == 0 and run(tmp_path, "--measure", name="rec") == 0
    assert not (tmp_path / "plain" / "measurements.jsonl").exists()
    plain, rec = read_jsonl(tmp_path / "plain" / "archive.jsonl"), read_jsonl(tmp_path / "rec" / "archive.jsonl")
    assert [r["objectives"] for r in plain] == [r["objectives"] for r in rec]
    assert "decode_ms" not in plain[0] and "memory_bytes" in rec[0]


def test_an_objective_may_be_a_comma_list_of_metrics():
    rc = RunConfig.make("cpu", objective="perplexity,decode_ms@1024,params")
    assert rc.metrics == ("perplexity", "decode_ms@1024", "params") and rc.measures
    assert not RunConfig.make("cpu", objective="perplexity,params").measures
    for bad in ("perplexity,latency", "perplexity,decode_ms@512", "perplexity,perplexity"):
        with pytest.raises(UsageError, match="unknown --objective"):
            RunConfig.make("cpu", objective=bad)
    with pytest.raises(UsageError, match="--max-latency"):
        RunConfig.make("cpu", max_latency=-1.0)


@pytest.mark.slow
def test_killed_while_measuring_or_training_resumes_without_measuring_again(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog.os, "fsync", lambda fd: None)  # speed only
    real, files = runlog.append_line, []
    monkeypatch.setattr(runlog, "append_line", lambda fh, line: (files.append(Path(fh.name).name), real(fh, line))[1])
    assert run(tmp_path, "--objective", "quality_latency", name="whole") == 0
    whole = tmp_path / "whole"
    measured = [n for n, f in enumerate(files) if f == "measurements.jsonl"]
    trained = [n for n, f in enumerate(files) if f == "archive.jsonl"]
    assert len(measured) == len(read_jsonl(whole / "measurements.jsonl"))
    cases = [(measured[0], "after"), (measured[2], "torn"), (measured[-1], "after"), (trained[len(trained) // 2], "torn")]

    class Killed(BaseException):
        pass
    for n, mode in cases:
        calls = []

        def dies(fh, line, n=n, mode=mode):
            calls.append(1)
            if len(calls) - 1 == n:
                if mode == "after":
                    real(fh, line)
                else:
                    fh.write(line[: len(line) // 2])
                    fh.flush()
                raise Killed
            real(fh, line)
        monkeypatch.setattr(runlog, "append_line", dies)
        with pytest.raises(Killed):
            run(tmp_path, "--objective", "quality_latency", name=f"k{n}")
        monkeypatch.setattr(runlog, "append_line", real)
        assert run(tmp_path, "--objective", "quality_latency", "--resume", name=f"k{n}") == 0
        d = tmp_path / f"k{n}"
        timeless = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "load_average")} for r in rs]  # noqa: E731
        assert timeless(read_jsonl(d / "measurements.jsonl")) == timeless(read_jsonl(whole / "measurements.jsonl")), n
        assert strip(read_jsonl(d / "archive.jsonl")) == strip(read_jsonl(whole / "archive.jsonl")), (n, mode)


def test_a_format_2_config_written_before_these_fields_still_resumes(tmp_path):
    plain = lambda *a: cli.main(TINY + ["--out", str(tmp_path), "--name", "r", *a])  # noqa: E731
    assert plain() == 0
    path = tmp_path / "r" / "config.json"
    stored = json.loads(path.read_text())
    for k in config.DEPLOY_DEFAULTS:
        del stored[k]
    stored["format"] = 2  # as written before these fields (format 3 added only the data fingerprint)
    path.write_text(json.dumps(stored))
    assert RunConfig.from_json(path.read_text()) == RunConfig(**{k: v for k, v in stored.items() if k != "format"})
    assert plain("--resume", "--generations", "2") == 0
    assert json.loads(path.read_text())["measure"] is False


# ----------------------------------------------------------------------------------------------------
# Budgets (D35)
# ----------------------------------------------------------------------------------------------------


def test_constrained_sort_against_brute_force_deb_rule():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 12))
        F = rng.integers(0, 4, size=(n, 2)).astype(float)
        cv = np.where(rng.random(n) < 0.4, rng.integers(1, 3, size=n), 0).astype(float)
        if rng.random() < 0.2:
            F[int(rng.integers(n))] = np.inf

        def beats(i, j):  # Deb: feasible over infeasible, smaller violation, then Pareto dominance
            fi, fj = np.isfinite(F[i]).all(), np.isfinite(F[j]).all()
            if fi != fj:
                return fi
            if not fi:
                return False
            if (cv[i] == 0) != (cv[j] == 0):
                return cv[i] == 0
            if cv[i] > 0:
                return cv[i] < cv[j]
            return bool((F[i] <= F[j]).all() and (F[i] < F[j]).any())
        rank = {int(i): r for r, front in enumerate(evolve.constrained_sort(F, cv)) for i in front}
        assert sorted(rank) == list(range(n))
        for i, j in itertools.permutations(range(n), 2):
            if beats(i, j):
                assert rank[i] < rank[j]
            if rank[i] == rank[j]:
                assert not beats(i, j)
    F = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    assert [f.tolist() for f in evolve.constrained_sort(F, np.zeros(3))] == [f.tolist() for f in evolve.non_dominated_sort(F)]


def test_survivors_are_feasible_once_enough_are_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n, k = int(rng.integers(4, 14)), int(rng.integers(1, 6))
        F = rng.random((n, 2))
        cv = np.where(rng.random(n) < 0.5, rng.random(n), 0.0)
        keep = evolve.select_survivors(F, k, np.random.default_rng(0), cv)
        feasible = np.flatnonzero(cv == 0)
        if len(feasible) >= k:
            assert set(keep) <= set(feasible)
        else:  # all feasible ones, then the least violating
            assert set(feasible) <= set(keep)
            rest = sorted(cv[i] for i in range(n) if cv[i] > 0)
            assert sorted(cv[i] for i in keep if cv[i] > 0) == rest[: k - len(feasible)]


def test_a_cache_budget_that_excludes_transformer_pp_trains_no_genome_over_it(tmp_path):
    cfg = RunConfig.make("cpu", d_model=32, head_dim=16, depth=4).model_config(256)
    tpp_cache = genome.cache_bytes(genome.transformer_pp(4), cfg, seq_len=4096)
    cap = tpp_cache // 3
    lines = []
    rc = RunConfig.make("cpu", data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=2,
                        population=4, offspring=4, generations=2, baseline_seeds=1, seed_baselines=True, max_cache=cap)
    res = workshop.run.synthesize(rc, run_dir=tmp_path / "b", log=lines.append)
    assert res.records and all(r["cache_bytes"] <= cap for r in res.records)  # no infeasible genome trained
    assert any(b["cache_bytes"] > cap for b in res.baselines)  # the baselines are still reference points
    assert any("initial individual" in s and "over a budget" in s for s in lines)
    assert all(r["cache_bytes"] <= cap for r in res.top)
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "## Budgets (D35)" in summary and "| 0 | 4 | 4 | 100% |" in summary


def test_a_params_budget_holds_for_every_bred_child_brute_force():
    cfg = RunConfig.make("cpu", d_model=32, head_dim=16, depth=6).model_config(256)
    counts = lambda g: genome.count_params(g, cfg)["total"]  # noqa: E731
    rng = np.random.default_rng(0)
    sample = [genome.random_genome(6, rng) for _ in range(60)]
    cap = float(np.median([counts(g) for g in sample]))
    rc = RunConfig.make("cpu", d_model=32, head_dim=16, depth=6, max_params=int(cap))
    from workshop import deployment
    var = deployment.Costs(rc, None, cfg).variation(rc.variation())
    assert all(var.feasible(g) == (counts(g) <= cap) for g in sample)  # the predicate is the formula
    pop_texts, keys = [], []
    children = evolve._Breeder(var, np.random.default_rng(3), set()).samples(6)
    assert children and all(counts(c.individual) <= cap for c in children)
    pop_texts, keys = [c.text for c in children], [c.key for c in children]
    pop = evolve.Population(pop_texts, keys, np.random.default_rng(4).random((len(keys), 2)))
    rank, crowd = evolve.rank_and_crowding(pop.F)
    bred = evolve._Breeder(var, np.random.default_rng(5), set(keys)).offspring(pop, rank, crowd, 8)
    assert bred and all(counts(c.individual) <= cap for c in bred)


# ----------------------------------------------------------------------------------------------------
# Plugins (D37): a metric of one's own, end to end with workers
# ----------------------------------------------------------------------------------------------------

PLUGIN = '''from workshop import plugins


def embedding_share(genome, model, result):  # the genome, the built model, train.TrainResult
    return model.embed.weight.numel() / sum(p.numel() for p in model.parameters())


plugins.register_metric("embedding_share", embedding_share, label="share of parameters in the embedding")
'''


@pytest.mark.slow
def test_a_plugin_metric_is_an_objective_in_workers_on_resume_and_in_compare(tmp_path, monkeypatch):
    import subprocess
    import sys

    from workshop import plugins
    (tmp_path / "myplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    monkeypatch.setattr(plugins, "METRICS", {})
    obj = ["--objective", "perplexity,embedding_share", "--measure"]
    assert run(tmp_path, "--plugin", "myplug", *obj, "--workers", "2", name="w2") == 0
    assert run(tmp_path, "--plugin", "myplug", *obj, name="w1") == 0
    w1, w2 = (read_jsonl(tmp_path / n / "archive.jsonl") for n in ("w1", "w2"))
    assert sorted(strip(w1)) == sorted(strip(w2)) and all(r["objectives"][1] == r["embedding_share"] for r in w2)
    assert all(0 < r["embedding_share"] < 1 for r in w2) and "decode_ms" in w2[0]  # the plugin's and the meter's
    assert json.loads((tmp_path / "w2" / "config.json").read_text())["plugins"] == ["myplug"]
    assert "embedding_share" in (tmp_path / "w2" / "summary.md").read_text()
    # --resume without --plugin imports the run's plugin (gone from this process first)
    monkeypatch.setattr(plugins, "METRICS", {})
    monkeypatch.delitem(sys.modules, "myplug")
    assert run(tmp_path, *obj, "--resume", "--generations", "2", "--workers", "2", name="w2") == 0
    assert max(r["generation"] for r in read_jsonl(tmp_path / "w2" / "archive.jsonl")) == 2
    # --compare in a fresh process
    env = dict(__import__("os").environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, str(Path(star.__file__)), "--compare", str(tmp_path / "w1"), str(tmp_path / "w2")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "embedding_share" in out.stdout, out.stderr
    # an unknown plugin is one line, exit 2
    assert run(tmp_path, "--plugin", "no_such_plugin_module", name="bad") == 2
