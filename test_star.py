"""The design's own tests (DESIGN.md §10): the property that every genome the search can produce becomes
a valid, trainable model whose analytic counts are exact, and one whole synthesis run end to end.

Tests of the parts live beside them: test_liv.py (the LIVs), test_genome.py (genome, repair, canonical
form, variation), test_evolve.py (NSGA-II), test_train.py, test_cli.py, test_inputs.py, test_decode.py.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import evolve
import genome
import liv
import star
from config import RunConfig

# a tiny synthesis (seconds): synthetic data, width 32, depth 4
TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
        "--batch", "4", "--steps", "3", "--population", "4", "--offspring", "3", "--generations", "2",
        "--preset", "cpu", "--final-top", "3"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tmp_path, *extra, name="r"):
    return star.main(TINY + ["--out", str(tmp_path), "--name", name, *extra])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only add OpenMP fan-out
    yield
    torch.set_num_threads(n)


@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from(["liv", "anywhere"]))
def test_every_sampled_mutated_and_crossed_genome_is_a_trainable_model_with_exact_counts(depth, seed, cut):
    """Sampled (D18), mutated, crossed and crossed-then-mutated genomes, each repaired as the search does:
    valid, canonical form stable, the decoded model takes one AdamW step with a finite loss before and
    after, and its unique parameters and decoder cache equal the analytic counts (D7, §5)."""
    rng = np.random.default_rng(seed)
    a, b = genome.random_genome(depth, rng, share_rate=0.3), genome.random_genome(depth, rng, share_rate=0.3)
    children = [a, genome.mutate(a, rng), genome.crossover(a, b, rng, cut=cut),
                genome.mutate(genome.crossover(a, b, rng, cut=cut), rng)]
    cfg = liv.ModelConfig(vocab_size=64, d_model=32, head_dim=8, depth=depth, max_len=32)
    for child in children:
        g, _ = genome.repair(child, rng)
        genome.validate(g)
        key = genome.canonical(g)
        assert genome.canonical(key) == key and genome.plans(key) == genome.plans(g)
        model = genome.build_model(g, cfg, seed=seed % 1000)
        assert all(p.numel() > 0 for p in model.parameters())
        assert sum({id(p): p.numel() for p in model.parameters()}.values()) == genome.count_params(g, cfg)["total"]
        assert liv.measure_cache_bytes(model, 32) == genome.cache_bytes(g, cfg, seq_len=32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        idx = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(seed % 1000))
        losses = []
        for _ in range(2):
            loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert all(math.isfinite(x) for x in losses), (str(g), losses)
        assert losses[1] != losses[0]  # the step changed the model


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
    base_recs = read_jsonl(d / "baselines.jsonl")  # D21: each baseline under 3 training seeds
    assert [(b["name"], b["seed"]) for b in base_recs] == [(n, s) for n in ("transformer++", "striped-mamba")
                                                            for s in (0, 1, 2)]
    assert len({b["perplexity"] for b in base_recs if b["name"] == "transformer++"}) == 3  # seeds differ
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
    # the baselines and the top-k were retrained for --final-steps under the same 3 seeds (D21)
    final = read_jsonl(d / "final.jsonl")
    top = star.select_top_k(archive, base["transformer++"], "quality_size_cache", 3)
    jobs = [base["transformer++"]["key"], base["striped-mamba"]["key"]] + [t["key"] for t in top]
    assert [(f["genome"], f["seed"]) for f in final] == [(g, s) for g in jobs for s in (0, 1, 2)]
    assert "Proxy fidelity: Spearman rank correlation" in summary and "## Hypervolume against evaluations" in summary
