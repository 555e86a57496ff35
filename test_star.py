"""The card's tests (DESIGN.md §10): every genome the search can produce becomes a valid, trainable model
whose analytic counts are exact, and the reference synthesis (star.py) runs end to end by itself.

    pytest test_star.py        # under a minute; the rest of the suite is in tests/

The parts are tested beside this in tests/: test_liv.py (the LIVs against their oracles), test_genome.py
(genome, repair, canonical form, variation), test_evolve.py (NSGA-II against pymoo), test_train.py,
test_reference.py (the reference and the workshop's run folder give the same archive), and the workshop.
"""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import genome
import liv
import star

ROOT = Path(__file__).resolve().parent


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


def test_the_reference_runs_a_whole_synthesis_alone():
    """star.synthesize in a fresh interpreter at a tiny size: the baselines under 3 seeds, generation 0 and
    two more, the selection; every record decodes to its canonical key and counts, the front is
    non-dominated, the selection is smaller than Transformer++ and sorted; no module of the workshop loaded."""
    code = textwrap.dedent("""
        import json, sys
        import star
        config = star.Config.make("cpu", data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4,
                                    steps=3, eval_tokens=256, population=4, offspring=3, generations=2, final_top=3)
        lines = []
        result = star.synthesize(config, device="cpu", log=lines.append)
        print(json.dumps(dict(records=result.records, top=result.top, front=result.front, baselines=result.baselines,
                              lines=lines, workshop=sorted(m for m in sys.modules if m.split(".")[0] == "workshop"))))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["workshop"] == []
    records, top, front = out["records"], out["top"], out["front"]
    assert [r["generation"] for r in records] == [0] * 4 + [1] * 3 + [2] * 3
    assert len({r["key"] for r in records}) == len(records)  # never the same architecture twice
    cfg = liv.ModelConfig(vocab_size=256, d_model=32, head_dim=16, depth=4, max_len=4096)
    for r in records:
        g = genome.Genome.parse(r["genome"])
        assert genome.canonical_str(g) == r["key"] and r["params"] == genome.count_params(g, cfg)["total"]
        assert r["cache_bytes"] == r["cache_bytes_measured"] == genome.cache_bytes(g, cfg, seq_len=4096)
        assert r["objectives"] == ([r["perplexity"], r["cache_bytes"]] if r["status"] == "ok" else [None, None])
    rates = [0.0129 * m for m in (0.5, 1.0, 2.0)]  # the cpu preset's rate and the default grid (D41)
    assert [(b["name"], b["lr"], b["seed"]) for b in out["baselines"]] == [
        (n, lr, s) for n in ("transformer++", "striped-mamba") for lr in rates for s in (0, 1, 2)]
    for name, best in star.at_best_rate(out["baselines"]).items():  # each at its best rate, by brute force
        mean = {lr: np.mean([b["perplexity"] for b in out["baselines"] if (b["name"], b["lr"]) == (name, lr)])
                for lr in rates}
        assert [b["seed"] for b in best] == [0, 1, 2] and best[0]["lr"] == min(rates, key=mean.get)
    tpp = [b for b in out["baselines"] if b["name"] == "transformer++"]
    assert all(t["cache_bytes"] < tpp[0]["cache_bytes"] for t in top) and len(top) <= 3
    assert [t["perplexity"] for t in top] == sorted(t["perplexity"] for t in top)
    ok = [r for r in records if r["status"] == "ok"]
    smaller = sorted((r for r in ok if r["cache_bytes"] < tpp[0]["cache_bytes"]), key=lambda r: r["perplexity"])
    assert [t["key"] for t in top] == [r["key"] for r in smaller[:3]]  # the paper's rule, by brute force
    F_ok = np.array([[r["perplexity"], r["cache_bytes"]] for r in ok])
    dominated = {i for i in range(len(ok)) for j in range(len(ok)) if (F_ok[j] <= F_ok[i]).all() and (F_ok[j] < F_ok[i]).any()}
    assert sorted(r["key"] for r in front) == sorted(ok[i]["key"] for i in range(len(ok)) if i not in dominated)
    assert sum(line.startswith("generation ") for line in out["lines"]) == 3
