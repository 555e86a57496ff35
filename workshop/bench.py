"""Speed benchmarks of the LIV library and the search loop: a table on stdout, JSON on disk.

    python -m workshop.bench                      # CPU, all sections, < 5 minutes on 2 cores
    python -m workshop.bench --device cuda        # the GPU shapes, bf16 autocast
    python -m workshop.bench --quick              # tiny sizes, seconds (the smoke test uses it)
    python -m workshop.bench --only classes,scan  # some sections

Sections (the JSON keys):

    classes      per LIV class 1-17: training throughput (forward + backward), model TFLOP/s and (CUDA) bf16 MFU,
                 peak memory, ratios to SA-1
    scan         recurrence: scan_chunked vs scan_loop, forward + backward, l in {256, 1024, 4096}
    conv         GConv-2's long convolution: fft_conv vs direct_conv, forward + backward, same lengths
    transformer  Transformer++ decoded from its plans vs a plain hand-written Llama: training step time
    decode       time per generated token per class with 256 and 4096 tokens already cached
    search       the NSGA-II loop's own bookkeeping as a share of one CPU-preset generation
    variation    D18's targets: share of offspring needing repair (1000 mutations, 1000 crossovers of
                 random depth-24 parents, both cuts) and sharing rates of sampled genomes; no training
    efficacy     (only with --only efficacy; about an hour a seed on 2 cores) issue 17's comparison (D39):
                 whole quality_cache cpu-preset runs of single- and multi-fidelity NSGA-II and random search
                 (with and without the same halving) at about equal compute for --seeds, then each run's top-4
                 and Transformer++ retrained 1000 steps under seeds 0, 1, 2 (2 worker processes): hypervolume
                 at the search's fidelity, best retrained perplexity, regret, retrained hypervolume, Spearman
                 (and the halved runs' promoted candidates trained again at 25 and 50 steps: each budget's Spearman)
    fidelity     (only with --only fidelity; about 25 minutes on 2 cores) D38's cheap copy: single- and multi-
                 fidelity NSGA-II and random search at about equal training steps per generation, seeds 0-2,
                 each run's top-4 retrained 4x longer under 2 seeds: best retrained perplexity, regret, Spearman; and 32 offspring bought with a 5-step rung (new front members per generation)
    scaling      (only with --only scaling; about an hour on 2 cores, estimated) README's seed-0 winner
                 and Transformer++, both scaled to depth 12 (space.repeat: two independent copies of
                 the depth-6 genomes) and width 128, trained 1000 steps under seeds 0, 1, 2 (D26)

On demand only (`--only memory,parallel,threads`; they build full-size models or start processes):

    memory       the paper preset's training step (width 768, depth 24, 64 x 4096 tokens): estimated peak
                 memory per LIV class (training.step_memory) and the micro-batch train.py picks for an 80 GB
                 GPU; with --device cuda, also the measured peak of one step of the largest class
    parallel     one generation (the population) of the cpu preset on the default corpus, evaluated in
                 this process and by 2 worker processes (parallel.py): wall time of each, same results?
    threads      one cpu-preset candidate in a fresh process: 1 vs 2 threads, OMP_WAIT_POLICY default vs
                 PASSIVE, with and without a competing busy process; the load average with each number

How we measure: every comparison runs in one process, side by side, after a warm-up, as *interleaved*
repeats (A B A B ...) whose median is reported — the machine this runs on is shared, so absolute times
drift; ratios measured this way do not. CUDA timings synchronise around every timed call.

Peak memory. CUDA: torch.cuda.max_memory_allocated during one training step, minus what was allocated
before it. CPU: torch keeps no allocator statistics on the CPU, so we run one step under
torch.profiler(profile_memory=True), which records every allocation and free of torch's CPU allocator
with its size and time, and replay them in order: the peak of live bytes above the step's start. That is
the same quantity as on CUDA (activations saved for backward, transients, gradients; parameters and the
input excluded). Process RSS would be the other choice, but it includes the interpreter, is inflated by
glibc's caching of freed blocks and needs a process per class; the profiler replay is exact and cheap.

The `--device cuda` path (bf16 autocast, torch.cuda.synchronize around timed calls, max_memory_allocated,
fused AdamW, MFU against the card's bf16 peak) is written to be correct by construction but had not been
run when this was written: no GPU was available. Its numbers belong in README with the device name.

This file imports no test code: the hand-written Llama below is its own (mirroring test_liv.HandLlama).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

import corpus
import evolve
import genome
import liv
import star
import train
from workshop import candidate, config, evaluation, fidelity, meter, report, runlog, space, training, userdata, words
from workshop.config import ONE_RATE, RunConfig

SECTIONS = ("classes", "scan", "conv", "transformer", "decode", "search", "variation")
ON_DEMAND = ("memory", "parallel", "threads", "efficacy", "noise", "scaling", "proxies", "fidelity", "recipe",
             "recipe_scaled", "ops", "profile")  # long: only when named in --only

# ----------------------------------------------------------------------------------------------------
# Sizes per mode. "cpu" is the issue's CPU shape; "cuda" the issue's GPU shape; "quick" a smoke test.
# ----------------------------------------------------------------------------------------------------

# D38's cheap copy (CPU-sized on either device): arms at about equal training steps per generation
FIDELITY_CHEAP = dict(
    overrides=dict(d_model=32, head_dim=16, depth=4, seq_len=64, batch=8, steps=40, eval_tokens=4096, population=8,
                   generations=4, baseline_seeds=1),
    arms=[dict(name="nsga2 single", offspring=8), dict(name="nsga2 rungs 10,40 eta 4", offspring=16, rungs=(10, 40), eta=4),
          dict(name="random single", offspring=8, algorithm="random"),
          dict(name="random rungs 10,40 eta 4", offspring=16, rungs=(10, 40), eta=4, algorithm="random"),
          dict(name="nsga2 32 offspring, rungs 5,40 eta 8", offspring=32, rungs=(5, 40), eta=8)],
    seeds=(0, 1, 2), top=4, retrain_steps=160, retrain_seeds=(0, 1))

# The four searches of issue 17's comparison at about equal total compute (D39): (name, star.py options).
# Multi-fidelity runs train every child 25 steps and promote a quarter to the top rung (100 steps, the
# baselines' budget); 16 + 16 x 5 children at (25, 100) cost 4,800 training steps, as 8 + 8 x 5 at 100 do.
EFFICACY_ARMS = (("nsga2", []), ("random", ["--algorithm", "random"]),
                 ("nsga2-mf", ["--rungs", "25,100", "--eta", "4", "--population", "16", "--offspring", "16"]),
                 ("random-mf", ["--algorithm", "random", "--rungs", "25,100", "--eta", "4", "--population", "16",
                                "--offspring", "16"]),
                 # a higher low rung at the same 800 steps a generation: 10 x 50 + 3 x 100
                 ("nsga2-mf50", ["--rungs", "50,100", "--eta", "4", "--population", "10", "--offspring", "10"]))
RUN_NAMES = {"nsga2": "nsga2-liv", "random": "random-liv"}  # the folder names of the first efficacy runs, kept
QUICK_ARMS = (("nsga2", []), ("random", ["--algorithm", "random"]),
              ("nsga2-mf", ["--rungs", "1,2", "--eta", "2", "--offspring", "4"]),
              ("random-mf", ["--algorithm", "random", "--rungs", "1,2", "--eta", "2", "--offspring", "4"]))
# probe_steps: each halved run's promoted candidates are trained again at these budgets under the run's seed, to
# see how well a lower rung would have ordered their top-rung scores (the 25-step one checks the recipe).
EFFICACY = dict(extra=["--no-weights"], arms=EFFICACY_ARMS, top=4, retrain_steps=1000, retrain_seeds=(0, 1, 2), workers=2,
                probe_steps=(25, 50))

# issue 28's sweep of the peak learning rate (bench_recipe)
RECIPE = dict(preset="cpu", overrides={}, genomes=None, n_random=8, lr_min=3e-4, lr_max=5.5e-2, lr_factor=1.6,
              shared=8e-4, budgets=(1, 10), seeds=(0, 1, 2), near=1, top=2, workers=2)
# the scaling shape (README's scaling check): the two baselines and the seed-0 winner at depth 12, width 128, at
# the candidate budget (10x costs hours on CPU), on the part of the grid that holds their optima
RECIPE_SCALED = dict(RECIPE, overrides=dict(d_model=128, depth=12), n_random=0, budgets=(1,), lr_min=7.7e-4, lr_max=3.4e-2,
                     genomes={"seed-0 winner x2": "9.1.1.1.1-8.2.1.2.1-9.3.1.3.1-16.4.1.4.1-16.5.1.5.1-16.6.1.6.1"})

SIZES = {
    "cpu": dict(
        classes=dict(b=8, l=512, d=256, head_dim=64, repeats=3),
        scan=dict(b=2, h=4, p=64, n=16, lengths=(256, 1024, 4096), repeats=3),
        conv=dict(b=1, c=128, lengths=(256, 1024, 4096), repeats=3),
        transformer=dict(b=4, l=256, d=256, head_dim=64, blocks=2, repeats=7),
        decode=dict(d=256, head_dim=64, contexts=(256, 4096), steps=8),
        search=dict(pop=16, offspring=16, generations=3, timed_steps=6, genomes=3),
        variation=dict(n=1000, samples=2000), efficacy=EFFICACY,
        memory=dict(preset="paper", gpu_bytes=80 * 10**9),
        parallel=dict(preset="cpu", workers=2, data=None, overrides={}),
        threads=dict(preset="cpu", overrides={}),
        noise=dict(preset="cpu", overrides={}, seeds=3),
        scaling=dict(preset="cpu", times=2, overrides=dict(d_model=128, steps=1000), seeds=(0, 1, 2)),
        proxies=dict(n=100, d=256, head_dim=64, contexts=(1024, 4096), repeats=2, steps=16, retries=0, stability=3),
        fidelity=FIDELITY_CHEAP, recipe=RECIPE, recipe_scaled=RECIPE_SCALED,
        ops=dict(preset="cpu", batch=8, classes=tuple(range(1, 18))), profile=dict(preset="cpu", steps=3),
    ),
    "cuda": dict(
        classes=dict(b=8, l=4096, d=768, head_dim=64, repeats=10),
        scan=dict(b=8, h=12, p=64, n=16, lengths=(256, 1024, 4096), repeats=10, long_repeats=3),  # the loop: ~1 s a call
        conv=dict(b=8, c=768, lengths=(256, 1024, 4096), repeats=10),
        transformer=dict(b=8, l=4096, d=768, head_dim=64, blocks=12, repeats=10),
        decode=dict(d=768, head_dim=64, contexts=(256, 4096), steps=32),
        search=dict(pop=16, offspring=16, generations=3, timed_steps=10, genomes=3),
        variation=dict(n=1000, samples=2000), efficacy=EFFICACY,
        memory=dict(preset="paper", gpu_bytes=None),  # None: this GPU's own memory
        parallel=dict(preset="gpu", workers=2, data=None, overrides={}),
        threads=dict(preset="cpu", overrides={}),
        noise=dict(preset="gpu", overrides={}, seeds=3),
        scaling=dict(preset="gpu", times=2, overrides=dict(d_model=128, steps=1000), seeds=(0, 1, 2)),
        proxies=dict(n=100, d=768, head_dim=64, contexts=(4096, 32768), repeats=5, steps=32, retries=1, stability=3),
        fidelity=FIDELITY_CHEAP, recipe=dict(RECIPE, preset="gpu"), recipe_scaled=dict(RECIPE_SCALED, preset="gpu"),
        ops=dict(preset="gpu", batch=8, classes=tuple(range(1, 18))), profile=dict(preset="gpu", steps=3),
    ),
    "quick": dict(
        classes=dict(b=2, l=32, d=64, head_dim=16, repeats=1),
        scan=dict(b=1, h=2, p=8, n=4, lengths=(16, 64), repeats=1),
        conv=dict(b=1, c=8, lengths=(16, 64), repeats=1),
        transformer=dict(b=2, l=32, d=64, head_dim=16, blocks=1, repeats=2),
        decode=dict(d=64, head_dim=16, contexts=(8, 32), steps=2),
        search=dict(pop=4, offspring=4, generations=1, timed_steps=1, genomes=1),
        variation=dict(n=50, samples=50),
        efficacy=dict(arms=QUICK_ARMS, top=2, retrain_steps=3, retrain_seeds=(0, 1), workers=1, probe_steps=(1, 2), extra=[
            "--no-weights", "--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len",
                             "32", "--batch", "4", "--steps", "2", "--population", "3", "--offspring", "2",
                             "--generations", "1", "--baseline-seeds", "2"]),
        memory=dict(preset="cpu", gpu_bytes=10**9),
        parallel=dict(preset="cpu", workers=2, data="synthetic", overrides=dict(
            d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=3, population=2)),
        threads=dict(preset="cpu", overrides=dict(d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=3)),
        noise=dict(preset="cpu", overrides=dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4,
                                                steps=3), seeds=2),
        scaling=dict(preset="cpu", times=2, overrides=dict(data="synthetic", d_model=32, seq_len=32, batch=4, steps=2),
                     seeds=(0,)),
        proxies=dict(n=3, d=32, head_dim=16, contexts=(16, 64), repeats=2, steps=4, retries=0, stability=1),
        fidelity=dict(overrides=dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=4,
                                     population=3, generations=1, baseline_seeds=1),
                      arms=[dict(name="nsga2 single", offspring=2), dict(name="nsga2 rungs 2,4 eta 2", offspring=4, rungs=(2, 4), eta=2)],
                      seeds=(0,), top=2, retrain_steps=4, retrain_seeds=(0,)),
        recipe=dict(RECIPE, overrides=dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4,
                                           steps=2), n_random=2, lr_min=1e-3, lr_max=4e-3, lr_factor=2.0, shared=2e-3,
                    budgets=(1, 2), seeds=(0, 1), workers=1),
        recipe_scaled=dict(RECIPE_SCALED, overrides=dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32,
                                                         batch=4, steps=2), lr_min=1e-3, lr_max=4e-3, lr_factor=2.0,
                           shared=2e-3, budgets=(1,), seeds=(0,), workers=1,
                           genomes={"winner x2": "9.1.1.1.1-8.2.1.2.1"}),
        ops=dict(preset="cpu", overrides=dict(d_model=32, head_dim=16, seq_len=32), batch=2, classes=(5, 8)),
        profile=dict(preset="cpu", overrides=dict(d_model=32, head_dim=16, seq_len=32, batch=2), steps=2),
    ),
}

# bf16 dense tensor-core peak (TFLOP/s) for the model-FLOPs utilisation (MFU) of the classes and transformer rows
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
FLOP_FORMULA = "6 x weight-matrix parameters x tokens + causal attention 6 x l x (heads x head width) x tokens"


def model_flops_per_token(n_matrix_params: int, attention_width: int, l: int) -> float:
    """Model FLOPs per training token, forward + backward (PaLM, appendix B): 6 per weight-matrix entry
    (2 forward, 4 backward), plus attention counted as half the full l x l score matrix (causal): QK^T and
    AV cost 4·l·w forward per token for a full matrix (w = heads x head width, summed over score maps),
    12·l·w with the backward, halved: 6·l·w. Scans, convolutions and FFTs are not counted, so the MFU of
    the Rec and GConv classes understates the work they do."""
    return 6 * n_matrix_params + 6 * l * attention_width


def peak_tflops(device: torch.device) -> float | None:
    """The card's bf16 dense peak from PEAK_BF16_TFLOPS by device name; None on CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device):
    """bf16 autocast on CUDA (as train.py trains); float32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def interleaved(fns: dict, device, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin (A B C A B C ...) after `warmup` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


peak_bytes = meter.peak_bytes  # the CPU profiler replay (module doc), shared with the deployment meter


fmt_bytes = words.fmt_bytes  # decimal units (1 MB = 10^6 bytes), as everywhere in the project


def fmt_s(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(head: list[str], rows: list[list]) -> str:
    cells = [head] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))
    return "\n".join([line(head), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


# ----------------------------------------------------------------------------------------------------
# 1. Per class: training throughput and peak memory
# ----------------------------------------------------------------------------------------------------


def bench_classes(device, s) -> dict:
    cfg = liv.ModelConfig(d_model=s["d"], head_dim=s["head_dim"], max_len=max(s["l"], 64))
    b, l = s["b"], s["l"]
    torch.manual_seed(0)
    x = torch.randn(b, l, cfg.d_model, device=device, requires_grad=True)
    steps, mem, n_matrix = {}, {}, {}
    for cid in liv.REGISTRY:
        m = liv.make_liv(cfg, cid).to(device)
        n_matrix[cid] = sum(p.numel() for p in m.parameters() if p.ndim >= 2)

        def step(m=m):  # one training step of one LIV: forward + backward, gradients freed first
            m.zero_grad(set_to_none=True)
            x.grad = None
            with autocast(device):
                y, _ = m(x)
            y.float().square().mean().backward()

        mem[cid] = peak_bytes(step, device)  # also the warm-up call
        steps[cid] = step
    t = interleaved(steps, device, s["repeats"], warmup=0)
    peak = peak_tflops(device)
    rows = []
    for cid, spec in liv.REGISTRY.items():
        rows.append(dict(id=cid, name=spec.name, step_s=t[cid], tokens_per_s=b * l / t[cid], peak_bytes=mem[cid],
                         time_vs_sa1=t[cid] / t[1], mem_vs_sa1=mem[cid] / mem[1]))
        width = (2 if spec.differential else 1) * cfg.d_model if spec.family == "SA" else 0  # H · P per score map
        rows[-1]["model_tflops"] = model_flops_per_token(n_matrix[cid], width, l) * rows[-1]["tokens_per_s"] / 1e12
        rows[-1]["mfu"] = rows[-1]["model_tflops"] / peak if peak else None
    slow = max(rows, key=lambda r: r["time_vs_sa1"])
    big = max(rows, key=lambda r: r["mem_vs_sa1"])
    return dict(shape=dict(b=b, l=l, d=cfg.d_model, head_dim=cfg.head_dim, dtype="bf16" if device.type == "cuda" else "fp32"),
                rows=rows, slowest=dict(name=slow["name"], time_vs_sa1=slow["time_vs_sa1"]),
                largest=dict(name=big["name"], mem_vs_sa1=big["mem_vs_sa1"]))


def print_classes(r):
    sh = r["shape"]
    print(f"\n## 1. LIV classes: one training step (forward + backward) of one LIV, b {sh['b']}, l {sh['l']}, "
          f"d {sh['d']}, head_dim {sh['head_dim']}, {sh['dtype']}")
    print(table(["id", "class", "step", "tokens/s", "peak mem", "time/SA-1", "mem/SA-1", "model TFLOP/s", "MFU"],
                [[x["id"], x["name"], fmt_s(x["step_s"]), f"{x['tokens_per_s']:,.0f}", fmt_bytes(x["peak_bytes"]),
                  f"{x['time_vs_sa1']:.2f}", f"{x['mem_vs_sa1']:.2f}", f"{x.get('model_tflops', 0):.3g}",
                  f"{x['mfu']:.1%}" if x.get("mfu") is not None else "-"] for x in r["rows"]]))
    print(f"model FLOPs: {FLOP_FORMULA}; MFU against the card's bf16 dense peak (CUDA only)")
    print(f"slowest: {r['slowest']['name']} {r['slowest']['time_vs_sa1']:.2f}x SA-1; "
          f"largest: {r['largest']['name']} {r['largest']['mem_vs_sa1']:.2f}x SA-1")


# ----------------------------------------------------------------------------------------------------
# 2. Recurrence: chunked scan vs loop
# ----------------------------------------------------------------------------------------------------


def bench_scan(device, s) -> dict:
    b, h, p, n = s["b"], s["h"], s["p"], s["n"]
    chunk = liv.ModelConfig().chunk_size
    rows = []
    for l in s["lengths"]:
        g = torch.Generator().manual_seed(l)
        mk = lambda *shape: torch.randn(*shape, generator=g).to(device)
        x, B, C = mk(b, l, h, p), mk(b, l, n) / math.sqrt(n), mk(b, l, n) / math.sqrt(n)
        log_a = -F.softplus(mk(b, l, h)) * 0.1  # decays a_t in (0, 1), as Rec-1 produces them
        leaves = [t.requires_grad_() for t in (x, log_a, B, C)]

        def run(chunked):
            for t in leaves:
                t.grad = None
            y, hl = liv.scan_chunked(x, log_a, B, C, chunk=chunk) if chunked else liv.scan_loop(x, log_a, B, C)
            (y.square().mean() + hl.square().mean()).backward()
            return y

        with torch.no_grad():
            err = (liv.scan_chunked(x, log_a, B, C, chunk=chunk)[0] - liv.scan_loop(x, log_a, B, C)[0]).abs().max().item()
        repeats = s.get("long_repeats", s["repeats"]) if l == max(s["lengths"]) else s["repeats"]
        t = interleaved({"chunked": lambda: run(True), "loop": lambda: run(False)}, device, repeats)
        rows.append(dict(l=l, chunked_s=t["chunked"], loop_s=t["loop"], loop_over_chunked=t["loop"] / t["chunked"],
                         max_abs_diff=err))
    longest = rows[-1]
    return dict(shape=dict(b=b, h=h, p=p, n=n, chunk=chunk), rows=rows,
                winner="chunked" if longest["loop_over_chunked"] >= 1 else "loop",
                winner_all=["chunked" if r["loop_over_chunked"] >= 1 else "loop" for r in rows],
                auto_scan=liv.AUTO_SCAN.get(device.type))


def print_scan(r):
    sh = r["shape"]
    print(f"\n## 2. Recurrence scan, forward + backward, b {sh['b']}, h {sh['h']}, p {sh['p']}, n {sh['n']}, "
          f"chunk {sh['chunk']}, fp32")
    print(table(["l", "chunked", "loop", "loop/chunked", "max |diff|"],
                [[x["l"], fmt_s(x["chunked_s"]), fmt_s(x["loop_s"]), f"{x['loop_over_chunked']:.1f}",
                  f"{x['max_abs_diff']:.1e}"] for x in r["rows"]]))
    print(f"faster per length: {r['winner_all']}; liv.AUTO_SCAN for this device: {r['auto_scan']!r}")


# ----------------------------------------------------------------------------------------------------
# 3. GConv-2: FFT vs direct convolution
# ----------------------------------------------------------------------------------------------------


def bench_conv(device, s) -> dict:
    b, c = s["b"], s["c"]
    rows = []
    for l in s["lengths"]:
        g = torch.Generator().manual_seed(l)
        u = torch.randn(b, l, c, generator=g).to(device).requires_grad_()
        hf = (torch.randn(c, l, generator=g) * torch.exp(-torch.arange(l) / l * 4)).to(device).requires_grad_()

        def run(fn):
            u.grad = hf.grad = None
            fn(u, hf).square().mean().backward()

        with torch.no_grad():
            ref = liv.direct_conv(u, hf)
            err = ((liv.fft_conv(u, hf) - ref).abs().max() / ref.abs().max()).item()
        t = interleaved({"fft": lambda: run(liv.fft_conv), "direct": lambda: run(liv.direct_conv)}, device, s["repeats"])
        rows.append(dict(l=l, fft_s=t["fft"], direct_s=t["direct"], direct_over_fft=t["direct"] / t["fft"], rel_diff=err))
    return dict(shape=dict(b=b, c=c), rows=rows)


def print_conv(r):
    sh = r["shape"]
    print(f"\n## 3. GConv-2 long convolution, forward + backward (input and filter), b {sh['b']}, channels {sh['c']}, fp32")
    print(table(["l", "fft", "direct", "direct/fft", "rel |diff|"],
                [[x["l"], fmt_s(x["fft_s"]), fmt_s(x["direct_s"]), f"{x['direct_over_fft']:.1f}",
                  f"{x['rel_diff']:.1e}"] for x in r["rows"]]))


# ----------------------------------------------------------------------------------------------------
# 4. Transformer++ decoded vs a plain hand-written Llama
# ----------------------------------------------------------------------------------------------------


class PlainLlama(nn.Module):
    """A plain Llama as one would write it by hand: separate q, k, v, o projections, RoPE (rotate-half,
    tables precomputed once), SDPA, SwiGLU, RMSNorm, tied head. Same parameters as Transformer++ (D3)."""

    def __init__(self, vocab, d, blocks, n_heads, ffn, max_len, eps=1e-5, theta=10000.0):
        super().__init__()
        self.h = n_heads
        self.emb = nn.Embedding(vocab, d)
        lin = lambda i, o: nn.Linear(i, o, bias=False)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            q=lin(d, d), k=lin(d, d), v=lin(d, d), o=lin(d, d), gate=lin(d, ffn), up=lin(d, ffn), down=lin(ffn, d),
            n1=nn.RMSNorm(d, eps=eps), n2=nn.RMSNorm(d, eps=eps))) for _ in range(blocks))
        self.nf = nn.RMSNorm(d, eps=eps)
        p = d // n_heads
        inv = theta ** (-torch.arange(0, p, 2, dtype=torch.float32) / p)
        ang = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        ang = torch.cat([ang, ang], -1)  # (max_len, p)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def rope(self, x):  # (b, h, l, p)
        l = x.shape[2]
        cos, sin = self.cos[:l].to(x.dtype), self.sin[:l].to(x.dtype)
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, idx):
        x = self.emb(idx)
        for L in self.layers:
            a = L["n1"](x)
            q, k, v = (rearrange(L[n](a), "b l (h p) -> b h l p", h=self.h) for n in "qkv")
            o = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
            x = x + L["o"](rearrange(o, "b h l p -> b l (h p)"))
            m = L["n2"](x)
            x = x + L["down"](F.silu(L["gate"](m)) * L["up"](m))
        return self.nf(x) @ self.emb.weight.T


def bench_transformer(device, s) -> dict:
    b, l, d, blocks = s["b"], s["l"], s["d"], s["blocks"]
    cfg = liv.ModelConfig(d_model=d, head_dim=s["head_dim"], depth=2 * blocks, max_len=l)
    torch.manual_seed(0)
    ours = liv.Backbone(cfg, [liv.LayerPlan(1 if i % 2 == 0 else 9, i, i) for i in range(cfg.depth)]).to(device)
    plain = PlainLlama(cfg.vocab_size, d, blocks, cfg.n_heads, cfg.ffn_hidden, l, cfg.norm_eps).to(device)
    n_ours, n_plain = (sum(p.numel() for p in m.parameters()) for m in (ours, plain))
    idx = torch.randint(0, cfg.vocab_size, (b, l + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]
    fused = device.type == "cuda"

    def trainer(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=fused)

        def step():  # one AdamW step: forward, loss, backward, update
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(x)
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
            opt.step()
        return step

    t = interleaved({"decoded": trainer(ours), "plain": trainer(plain)}, device, s["repeats"], warmup=2)
    out = dict(shape=dict(b=b, l=l, d=d, blocks=blocks, head_dim=cfg.head_dim), params_decoded=n_ours, params_plain=n_plain,
               decoded_s=t["decoded"], plain_s=t["plain"], ratio=t["decoded"] / t["plain"])
    n_matmul = sum(p.numel() for p in ours.parameters() if p.ndim >= 2)  # projections + the tied head
    flops_tok = model_flops_per_token(n_matmul, blocks * d, l)  # one score map of width d per attention layer
    out["model_tflops"] = flops_tok * b * l / t["decoded"] / 1e12
    if device.type == "cuda":
        peak = peak_tflops(device)
        out["mfu"] = out["model_tflops"] / peak if peak else None
    return out


def print_transformer(r):
    sh = r["shape"]
    print(f"\n## 4. Transformer++ decoded (liv.Backbone, [SA-1, GMemless] x {sh['blocks']}) vs plain hand-written Llama, "
          f"b {sh['b']}, l {sh['l']}, d {sh['d']}: one AdamW training step")
    print(table(["model", "params", "step", "ratio"],
                [["decoded", f"{r['params_decoded']:,}", fmt_s(r["decoded_s"]), f"{r['ratio']:.3f}"],
                 ["plain", f"{r['params_plain']:,}", fmt_s(r["plain_s"]), "1.000"]]))
    mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
    print(f"decoded: {r['model_tflops']:.3f} model TFLOP/s{mfu}")


# ----------------------------------------------------------------------------------------------------
# 5. Decode time per token
# ----------------------------------------------------------------------------------------------------


def bench_decode(device, s) -> dict:
    ctxs, n_steps = s["contexts"], s["steps"]
    cfg = liv.ModelConfig(d_model=s["d"], head_dim=s["head_dim"], depth=1, max_len=max(ctxs) + n_steps + 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    # one CPU thread: a batch-1 step is too small to split, and on a busy machine an OpenMP team waiting for
    # a descheduled thread costs whole scheduler ticks (4 ms quanta seen with 2 threads)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for cid, spec in liv.REGISTRY.items():
            rows.append(_decode_class(cfg, cid, spec, ctxs, n_steps, device, dtype))
    finally:
        torch.set_num_threads(threads)
    return dict(shape=dict(d=cfg.d_model, head_dim=cfg.head_dim, batch=1, layers=1, dtype=str(dtype).split(".")[-1],
                           threads=1 if device.type == "cpu" else None), contexts=list(ctxs), rows=rows)


def _decode_class(cfg, cid, spec, ctxs, n_steps, device, dtype) -> dict:
    """Prefill a cache with ctx tokens, then time single-token steps (median), for each context length."""
    torch.manual_seed(cid)
    m = liv.Backbone(cfg, [liv.LayerPlan(cid, 0, 0)]).to(device=device, dtype=dtype).eval()
    row = dict(id=cid, name=spec.name, cache_bytes=liv.measure_cache_bytes(m, max(ctxs)))
    for ctx in ctxs:
        with torch.no_grad():
            cache = m.new_cache(1, ctx + n_steps + 1)
            m(torch.randint(0, cfg.vocab_size, (1, ctx), device=device), cache)  # prefill
            tok = torch.randint(0, cfg.vocab_size, (1, 1), device=device)
            m(tok, cache)  # warm-up step
            ts = []
            for _ in range(n_steps):
                sync(device)
                t = time.perf_counter()
                m(tok, cache)
                sync(device)
                ts.append(time.perf_counter() - t)
        row[f"ms_per_token@{ctx}"] = statistics.median(ts) * 1e3
    row["growth"] = row[f"ms_per_token@{ctxs[-1]}"] / row[f"ms_per_token@{ctxs[0]}"]
    return row


def print_decode(r):
    sh, c = r["shape"], r["contexts"]
    print(f"\n## 5. Decoding: time per token of a one-LIV model (d {sh['d']}, batch 1, {sh['dtype']}) after prefilling "
          f"{c[0]} / {c[-1]} tokens")
    print(table(["id", "class", f"@{c[0]}", f"@{c[-1]}", "growth", f"cache @{c[-1]} (bf16)"],
                [[x["id"], x["name"], f"{x[f'ms_per_token@{c[0]}']:.2f} ms", f"{x[f'ms_per_token@{c[-1]}']:.2f} ms",
                  f"{x['growth']:.2f}x", fmt_bytes(x["cache_bytes"])] for x in r["rows"]]))


# ----------------------------------------------------------------------------------------------------
# 6. Search overhead
# ----------------------------------------------------------------------------------------------------


def bench_search(device, s, quick: bool) -> dict:
    try:
        import evolve
        import genome as gn
        from workshop import runlog
        runlog.search, evaluation.Evaluation, evaluation.sequential  # noqa: B018 — the API this section needs
    except (ImportError, AttributeError) as e:
        return dict(skipped=f"runlog.search / genome not available ({e})")
    try:  # the CPU preset of star.py, when it exists; else the issue's stand-in
        p = config.PRESETS["cpu"]
        preset = dict(source="config.PRESETS['cpu']", d_model=p.d_model, head_dim=p.head_dim, depth=p.depth,
                      seq_len=p.seq_len, batch=p.batch, steps=p.steps, offspring=p.offspring)
    except Exception:  # noqa: BLE001 — star.py is optional here
        preset = dict(source="stand-in (no config.PRESETS)", d_model=64, head_dim=16, depth=6, seq_len=128, batch=16,
                      steps=150, offspring=16)
    if quick:
        preset.update(d_model=32, head_dim=16, depth=2, seq_len=16, batch=2)
    depth = preset["depth"]

    # (a) the loop's bookkeeping: NSGA-II with a no-op evaluator, archive written to disk as in a real run
    def noop(ind, generation):
        r = np.random.default_rng(abs(hash(gn.canonical_str(ind))) % 2**32)
        return evaluation.Evaluation(tuple(float(v) for v in r.random(2)))

    gens = s["generations"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        var = evolve.Variation(sample=lambda rng: gn.random_genome(depth, rng), crossover=gn.crossover,
                               mutate=gn.mutate, repair=gn.repair, encode=str, decode=gn.Genome.parse,
                               key=gn.canonical_str)
        runlog.search([], var, evaluation.sequential(noop),
                      evolve.Search(pop_size=s["pop"], n_offspring=s["offspring"], generations=gens, seed=0),
                      run_dir=tmp, log=lambda _m: None)
        bookkeeping = (time.perf_counter() - t0) / (gens + 1)

    # (b) one generation of the preset: offspring x (build the model + `steps` AdamW steps). The step time is
    # the median over a few random genomes of `timed_steps` steps after a warm-up step; evaluation is left out,
    # which makes the generation shorter and the overhead share larger (conservative).
    cfg = liv.ModelConfig(d_model=preset["d_model"], head_dim=preset["head_dim"], depth=depth, max_len=preset["seq_len"])
    rng = np.random.default_rng(0)
    builds, step_times = [], []
    for k in range(s["genomes"]):
        g = gn.random_genome(depth, rng)
        t0 = time.perf_counter()
        model = gn.build_model(g, cfg, seed=k).to(device)
        builds.append(time.perf_counter() - t0)
        opt = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.1)
        idx = torch.randint(0, cfg.vocab_size, (preset["batch"], preset["seq_len"] + 1), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(idx[:, :-1])
            F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step_times.append(interleaved({"s": step}, device, s["timed_steps"])["s"])
    candidate = statistics.median(builds) + preset["steps"] * statistics.median(step_times)
    generation = preset["offspring"] * candidate
    return dict(preset=preset, pop=s["pop"], offspring=s["offspring"], generations_timed=gens + 1,
                bookkeeping_s_per_generation=bookkeeping, step_s=statistics.median(step_times),
                candidate_s=candidate, generation_s=generation, overhead_share=bookkeeping / generation)


def print_search(r):
    print("\n## 6. Search overhead (NSGA-II bookkeeping with a no-op evaluator vs training one generation)")
    if "skipped" in r:
        print(f"skipped: {r['skipped']}")
        return
    p = r["preset"]
    print(f"bookkeeping: {fmt_s(r['bookkeeping_s_per_generation'])} per generation (population {r['pop']}, "
          f"{r['offspring']} offspring, archive on disk; mean of {r['generations_timed']} generations)")
    print(f"generation:  {p['offspring']} candidates x (build + {p['steps']} steps x {fmt_s(r['step_s'])}) = "
          f"{r['generation_s']:.1f} s   [{p['source']}: d {p['d_model']}, depth {p['depth']}, seq {p['seq_len']}, "
          f"batch {p['batch']}]")
    print(f"overhead share: {r['overhead_share']:.3%}")


# ----------------------------------------------------------------------------------------------------
# 7-9. On demand: the paper preset's memory, workers, threads under load
# ----------------------------------------------------------------------------------------------------


def striped(cid: int, depth: int) -> str:
    """A backbone of `depth` LIVs alternating class `cid` and GMemless (9), nothing shared: the baselines' layout."""
    return "-".join(f"{cid if k % 2 == 0 else 9}.{k + 1}.1.{k + 1}.1" for k in range(depth))


def bench_memory(device, s) -> dict:
    """The paper preset's step for every class: train.py's estimate, the micro-batch it picks, and (CUDA)
    the measured peak of one optimizer step of the largest class at that micro-batch."""
    import genome as gn
    import train

    p = config.PRESETS[s["preset"]]
    memory = s["gpu_bytes"] or training.device_memory(device)
    tcfg = train.TrainConfig(steps=1, batch=p.batch, seq_len=p.seq_len, device=str(device))
    cfg = liv.ModelConfig(vocab_size=256, d_model=p.d_model, head_dim=p.head_dim, depth=p.depth,
                          max_len=max(p.seq_len, 4096))
    rows = []
    for cid, spec in liv.REGISTRY.items():
        model = gn.build_model(gn.Genome.parse(striped(cid, p.depth)), cfg, seed=0).to(device)
        n = sum(q.numel() for q in model.parameters())
        a = training.saved_bytes_per_token(model, p.seq_len, tcfg.bf16)
        micro = training.micro_batch_for(model, tcfg, memory)
        peak = lambda m: 16 * n + m * p.seq_len * a  # training.step_memory's formula, A probed once
        rows.append(dict(id=cid, name=spec.name, params=n, act_bytes_per_token=a, micro_batch=micro,
                         micro_batches=p.batch // micro, peak_bytes=peak(micro), whole_batch_bytes=peak(p.batch)))
        del model
    largest = max(rows, key=lambda r: r["act_bytes_per_token"])
    res = dict(preset=s["preset"], batch=p.batch, seq_len=p.seq_len, d_model=p.d_model, depth=p.depth,
               memory_bytes=memory, probe="bf16 autocast" if device.type == "cuda" else "float32 (CPU probe)",
               rows=rows, largest=largest)
    if device.type == "cuda":  # one real optimizer step of the largest class at the chosen micro-batch
        model = gn.build_model(gn.Genome.parse(striped(largest["id"], p.depth)), cfg, seed=0).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(0, 256, (p.batch, p.seq_len + 1), device=device)
        torch.cuda.reset_peak_memory_stats(device)
        for xm in x.split(largest["micro_batch"]):
            with autocast(device):
                logits = model(xm[:, :-1])
            (F.cross_entropy(logits.float().flatten(0, 1), xm[:, 1:].flatten()) * xm.shape[0] / p.batch).backward()
        opt.step()
        res["measured_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return res


def print_memory(r):
    print(f"\n## 7. Memory of one {r['preset']}-preset step ({r['batch']} x {r['seq_len']} tokens, width {r['d_model']}, "
          f"depth {r['depth']}; activations probed in {r['probe']}; device budget {fmt_bytes(r['memory_bytes'])})")
    print(table(["class", "params", "saved/token", "whole batch", "micro-batch", "steps of", "estimated peak"],
                [[f"{x['id']} {x['name']}", f"{x['params'] / 1e6:.1f}M", fmt_bytes(x["act_bytes_per_token"]),
                  fmt_bytes(x["whole_batch_bytes"]), x["micro_batch"], x["micro_batches"], fmt_bytes(x["peak_bytes"])]
                 for x in r["rows"]]))
    big = r["largest"]
    print(f"largest class {big['id']} {big['name']}: {big['micro_batches']} micro-batches of {big['micro_batch']} "
          f"sequences, estimated peak {fmt_bytes(big['peak_bytes'])}"
          + (f", measured {fmt_bytes(r['measured_peak_bytes'])}" if "measured_peak_bytes" in r else
             " (not measured: needs --device cuda)"))


def _star_config(s, device):
    from workshop import cli

    argv = ["--preset", s["preset"], "--device", str(device)] + (["--data", s["data"]] if s.get("data") else [])
    for k, v in s["overrides"].items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return cli.config_of(cli.build_parser().parse_args(argv))[0]


def bench_parallel(device, s) -> dict:
    """One generation (the initial population) evaluated in process, then by worker processes."""
    import evolve
    import genome as gn
    from workshop import parallel

    rc = _star_config(s, device)
    data = userdata.load_data(rc.data, rc.vocab_size)
    cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config(str(device))
    rng = np.random.default_rng(0)
    genomes = [gn.repair(gn.random_genome(rc.depth, rng), rng)[0] for _ in range(rc.population)]

    def one(g, generation):
        info, objectives = candidate.evaluate_genome(g, cfg, tcfg, data, rc)
        return evaluation.Evaluation(objectives=objectives, info=info)

    def generation(evaluate) -> tuple[float, list]:
        got = [None] * len(genomes)
        t0 = time.perf_counter()
        evaluate(genomes, 0, lambda i, ev: got.__setitem__(i, list(ev.objectives)))
        return time.perf_counter() - t0, got

    candidate.describe_costs(genomes[0], cfg, rc.cache_len)  # warm-up, as a worker does before it is ready
    load0 = os.getloadavg()[0]
    t1, r1 = generation(parallel.evaluator(one, rc, str(device)))
    t0 = time.perf_counter()
    pool = parallel.LocalPool(rc, str(device), workers=s["workers"])
    pool.wait_ready()
    startup = time.perf_counter() - t0
    tn, rn = generation(pool)
    pool.close()
    return dict(preset=rc.preset, candidates=len(genomes), workers=s["workers"], one_process_s=t1,
                workers_s=tn, workers_startup_s=startup, speedup=t1 / tn, identical=r1 == rn,
                loadavg_before=load0, loadavg_after=os.getloadavg()[0])


def print_parallel(r):
    print(f"\n## 8. One generation of the {r['preset']} preset ({r['candidates']} candidates), in process vs "
          f"{r['workers']} worker processes")
    print(f"in process: {r['one_process_s']:.1f} s | {r['workers']} workers: {r['workers_s']:.1f} s "
          f"(+ {r['workers_startup_s']:.1f} s start-up, once per run) | x{r['speedup']:.2f} | identical objectives: "
          f"{r['identical']} | load average {r['loadavg_before']:.1f} -> {r['loadavg_after']:.1f}")


_CANDIDATE = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
import corpus, genome
from workshop import candidate
from workshop.config import RunConfig
rc = RunConfig.from_json(sys.argv[2])
data = userdata.load_data(rc.data, rc.vocab_size)
cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config("cpu")
g = genome.BASELINES["striped-mamba"](rc.depth)
candidate.describe_costs(g, cfg, rc.cache_len)  # warm-up: the meta-device imports
t = time.perf_counter()
info, _ = candidate.evaluate_genome(g, cfg, tcfg, data, rc)
print(json.dumps(dict(seconds=time.perf_counter() - t, val_loss=info["val_loss"])))
"""


def bench_threads(device, s) -> dict:
    """StripedMamba at the preset, in a fresh process per setting (OpenMP reads its policy at start-up)."""
    import subprocess

    rc = _star_config(s, "cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for loaded in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
        try:
            for threads in (1, 2):
                for policy in ("default", "PASSIVE"):
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    env["PYTHONPATH"] = os.pathsep.join(x for x in (here, env.get("PYTHONPATH")) if x)
                    if policy != "default":
                        env["OMP_WAIT_POLICY"] = policy
                    load = os.getloadavg()[0]
                    out = subprocess.run([sys.executable, "-c", _CANDIDATE, str(threads), rc.to_json()], env=env,
                                         capture_output=True, text=True, check=True).stdout
                    rows.append(dict(competing_load=loaded, threads=threads, omp_wait_policy=policy,
                                     loadavg=load, **json.loads(out.splitlines()[-1])))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return dict(preset=rc.preset, rows=rows, same_loss=len({r["val_loss"] for r in rows}) == 1)


def print_threads(r):
    print(f"\n## 9. One {r['preset']}-preset candidate (StripedMamba) per fresh process: threads, OpenMP wait policy, "
          "a competing busy process")
    print(table(["competing load", "threads", "OMP_WAIT_POLICY", "load average", "candidate s", "val loss"],
                [["yes" if x["competing_load"] else "no", x["threads"], x["omp_wait_policy"], f"{x['loadavg']:.1f}",
                  f"{x['seconds']:.1f}", f"{x['val_loss']:.6f}"] for x in r["rows"]]))
    print(f"same validation loss in every setting: {r['same_loss']}")


# ----------------------------------------------------------------------------------------------------
# Targets and main
# ----------------------------------------------------------------------------------------------------


def bench_variation(device, s) -> dict:
    """D18: how often variation needs repair, and how much sharing sampling produces. No training."""
    import genome as gn

    rng = np.random.default_rng(2025)
    pool = [gn.random_genome(24, rng) for _ in range(64)]
    pick = lambda: pool[rng.integers(len(pool))]  # noqa: E731
    n = s["n"]
    out = dict(n=n, mutation=float(np.mean([gn.repair(gn.mutate(pick(), rng), rng)[1] > 0 for _ in range(n)])))
    for cut in ("liv", "anywhere"):
        out[f"crossover_{cut}"] = float(np.mean([gn.repair(gn.crossover(pick(), pick(), rng, cut=cut), rng)[1] > 0
                                                 for _ in range(n)]))
    for depth in (6, 24):
        ps = [gn.plans(gn.random_genome(depth, rng)) for _ in range(s["samples"])]
        feat = [any(p.featurizer_owner != i for i, p in enumerate(q)) for q in ps]
        fg = [any(p.share_owner != i for i, p in enumerate(q)) for q in ps]
        out[f"sampled_depth{depth}"] = dict(featurizer=float(np.mean(feat)), feature_group=float(np.mean(fg)),
                                            either=float(np.mean([a or b for a, b in zip(feat, fg)])))
    return out


def print_variation(r):
    print(f"\n## Variation (D18): offspring needing repair over {r['n']} random depth-24 parents each")
    print(table(["operator", "needing repair"], [["mutation (p = 0.1)", f"{r['mutation']:.1%}"],
                                                 ["2-point crossover, cut between unlinked LIVs", f"{r['crossover_liv']:.1%}"],
                                                 ["2-point crossover, cut anywhere", f"{r['crossover_anywhere']:.1%}"]]))
    rows = [[f"depth {d}"] + [f"{r[f'sampled_depth{d}'][k]:.0%}" for k in ("featurizer", "feature_group", "either")]
            for d in (6, 24)]
    print("sampled genomes (SHARE_RATE, canonical) that use sharing:")
    print(table(["", "featurizer", "feature groups", "either"], rows))


def bench_noise(device, s) -> dict:
    """The held-out perplexity's sampling noise at a preset's eval tokens (D33), against the seed noise.

    Transformer++ is trained under `seeds` seeds and StripedMamba under the first, at the preset's budget;
    every model is scored window by window on the preset's held-out windows. The sampling noise of one
    score is ppl x (std of the window losses) / sqrt(windows); the noise of a *difference* between two
    candidates on the same windows is the paired one, ppl x std(loss_a - loss_b) / sqrt(windows), and is
    estimated a second way from two disjoint halves of the windows (even and odd): |d1 - d2| / 2 estimates
    the standard deviation of the whole set's difference."""
    import genome as gn

    rc = RunConfig.make(s["preset"], **s["overrides"])
    data = userdata.load_data(rc.data, rc.vocab_size)
    rc = rc.fitted(data)
    cfg = rc.model_config(data.vocab_size)
    starts = data.eval_windows(rc.eval_windows, rc.seq_len)

    def window_losses(name, seed):
        from workshop import parallel

        model = gn.build_model(gn.BASELINES[name](rc.depth), cfg, seed=seed)
        with parallel.candidate_threads(str(device)):  # as every candidate trains (D19): the run's scores
            res = train.train(model, data, dataclasses.replace(rc.train_config(str(device)), seed=seed), log=None,
                              plan=training.plan)
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(starts), rc.batch):
                x, y = data._windows(data.val, starts[i:i + rc.batch], rc.seq_len, device)
                with autocast(device):
                    logits = model(x).float()
                out += F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).tolist()
        return res.val_ppl, np.array(out)

    tpp = [window_losses("transformer++", rc.seed + k) for k in range(s["seeds"])]
    sm_ppl, sm = window_losses("striped-mamba", rc.seed)
    ppl0, l0 = tpp[0]
    n = len(l0)
    single = float(ppl0 * l0.std(ddof=1) / math.sqrt(n))
    d = l0 - sm
    paired = float(ppl0 * d.std(ddof=1) / math.sqrt(n))
    halves = [float(np.exp(l0[h::2].mean()) - np.exp(sm[h::2].mean())) for h in (0, 1)]
    seed_std = float(np.std([p for p, _ in tpp], ddof=1))
    return dict(preset=rc.preset, windows=n, seq_len=rc.seq_len, eval_tokens=n * rc.seq_len,
                tpp_ppl=[p for p, _ in tpp], striped_mamba_ppl=sm_ppl, seed_std=seed_std,
                noise_single=single, noise_paired=paired, halves=halves, noise_halves=abs(halves[0] - halves[1]) / 2,
                quarter_seed_std=seed_std / 4, keep=bool(paired <= seed_std / 4))


def print_noise(r):
    print(f"\n## Held-out noise: {r['preset']} preset, {r['windows']} windows of {r['seq_len']} = {r['eval_tokens']:,} tokens")
    print(f"Transformer++ perplexity under {len(r['tpp_ppl'])} seeds: "
          f"{', '.join(f'{p:.3f}' for p in r['tpp_ppl'])} (std {r['seed_std']:.3f}); StripedMamba {r['striped_mamba_ppl']:.3f}")
    print(table(["noise of", "perplexity std"], [
        ["one candidate's score (window sampling)", f"{r['noise_single']:.3f}"],
        ["a difference of two, paired windows", f"{r['noise_paired']:.3f}"],
        ["a difference of two, from disjoint halves", f"{r['noise_halves']:.3f} (halves {r['halves'][0]:+.3f}, "
                                                      f"{r['halves'][1]:+.3f})"],
        ["Transformer++ over training seeds", f"{r['seed_std']:.3f}"]]))
    print(f"paired sampling noise {'<=' if r['keep'] else '>'} a quarter of the seed std ({r['quarter_seed_std']:.3f}): "
          + ("the held-out set is large enough" if r["keep"] else "the held-out set is too small: raise --eval-tokens"))




def _book_key(text: str, seed: int, steps: int, lr: float = ONE_RATE["lr"]) -> tuple:
    """How the retraining book (retrain_all) names a training: the genome's canonical text, seed, steps, peak
    rate (a record written before D41 holds none: it trained at 8e-4)."""
    return genome.canonical_str(genome.Genome.parse(text)), seed, steps, lr


def _train_record(rc: RunConfig, text: str, seed: int, steps: int, device: str, lr: float | None = None) -> dict:
    """One training of a book (a worker process's job): the genome trained as the search trains it, at
    `steps` and, given, the peak rate `lr`; the book's record."""
    from workshop import parallel

    data = userdata.load_data(rc.data, rc.vocab_size)
    tcfg = rc.train_config(device, steps)
    tcfg = tcfg if lr is None else dataclasses.replace(tcfg, lr=lr)
    with parallel.candidate_threads(device):
        info, _ = candidate.evaluate_genome(genome.Genome.parse(text), rc.model_config(data.vocab_size), tcfg, data, rc,
                                            seed=seed)
    return dict(key=_book_key(text, seed, steps)[0], genome=text, seed=seed, steps=steps,
                perplexity=info["perplexity"] if info["status"] == "ok" else math.inf, status=info["status"],
                cache_bytes=info["cache_bytes"], seconds=info["seconds"], **({} if lr is None else {"lr": lr}))


def _retrain_one(job: tuple) -> dict:
    """One retraining: (run folder for the settings, genome text, seed, steps, device, peak rate)."""
    run_dir, text, seed, steps, device, lr = job
    return _train_record(report.load_run(run_dir)[0], text, seed, steps, device, lr)


def retrain_all(jobs: list[tuple], book: Path, workers: int) -> dict:
    """Every (run folder, genome, seed, steps, device, lr) job trained once (train_book), keyed by the genome's
    canonical text, seed, steps and rate: a genome in several runs' top-k trains once."""
    return train_book(jobs, book, workers, _retrain_one, lambda j: _book_key(*j[1:4], j[5]),
                      lambda r: (r["key"], r["seed"], r["steps"], r.get("lr", ONE_RATE["lr"])))


def at_best_rate(done: dict, text: str, seeds: list[int], steps: int, rates: list[float]) -> tuple[list[float], float]:
    """D41: a genome's retrained perplexities under `seeds` at its best of `rates` (lowest seed mean), and that rate."""
    (best,) = star.at_best_rate([done[_book_key(text, sd, steps, lr)] for lr in rates for sd in seeds], "key").values()
    return [r["perplexity"] for r in best], best[0].get("lr", ONE_RATE["lr"])


def train_book(jobs: list[tuple], book: Path, workers: int, one, job_key, record_key) -> dict:
    """Every job trained once by `one(job) -> record`: records already in `book` (a JSON-lines file, one
    line a training, appended as each finishes) are read, not trained again, so a killed bench loses at
    most the trainings in progress. `job_key(job)` and `record_key(record)` name a training alike."""
    import concurrent.futures
    import multiprocessing

    done = {}
    if book.exists():
        for line in book.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                done[record_key(r)] = r
    todo, seen = [], set()
    for j in jobs:
        k = job_key(j)
        if k not in done and k not in seen:
            seen.add(k)
            todo.append(j)
    print(f"  training: {len(todo)} to do, {len(done)} already in {book}", flush=True)

    def keep(r):
        done[record_key(r)] = r
        with open(book, "a") as f:
            f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        lr = f" lr {r['lr']:.3g}" if "lr" in r else ""
        print(f"  trained {r['genome']} seed {r['seed']}{lr} {r['steps']} steps: ppl {r['perplexity']:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)
    if workers <= 1:
        for j in todo:
            keep(one(j))
    else:  # spawned processes, one thread each (D19): each result is kept as soon as it is back
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in concurrent.futures.as_completed([pool.submit(one, j) for j in todo]):
                keep(f.result())
    return done


def welch(a, b) -> tuple[float, float, float]:
    """Welch's t-test that mean(a) < mean(b): (t, degrees of freedom, one-sided p) (report.student_t_sf)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # no spread in either: no test
        return math.nan, math.nan, math.nan
    t = float((b.mean() - a.mean()) / math.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)))
    return t, df, report.student_t_sf(t, df)


def retrained_hypervolume(points: list[tuple[float, float]], ref: tuple[float, float], log_cache: bool) -> float:
    """Hypervolume of (retrained perplexity, cache) points at the retrained Transformer++ point `ref`, on
    the linear cache axis or on log10 max(cache, 1 byte)."""
    f = (lambda c: math.log10(max(c, 1.0))) if log_cache else float
    return evaluation.hypervolume(np.array([[p, f(c)] for p, c in points], dtype=float).reshape(-1, 2), (ref[0], f(ref[1])))


def bench_efficacy(device, s, out_dir: str, seeds: list[int]) -> dict:
    """Issue 17's comparison (D39): for each seed, whole quality_cache runs of the cpu preset, one per arm
    of `s["arms"]` (single- and multi-fidelity NSGA-II, random search with and without the same halving)
    at about equal total compute (report.compute_tokens); then each run's selected top-k (star.select_top_k:
    under Transformer++'s cache, at the highest rung) and Transformer++ are retrained `retrain_steps` under
    `retrain_seeds`. Runs already finished in `out_dir` are read, not run again (an unfinished one is
    resumed); retrainings already in `out_dir/retrained.jsonl` are read, not trained again.

    Per run: candidates, compute, the hypervolume at the search's fidelity (each seed's runs at one common
    reference point, evaluation.default_ref_point over their top-rung candidates), the best retrained perplexity
    among the top-k, the regret of the chosen best, and the retrained hypervolume of the top-k at the
    retrained Transformer++ point on both cache axes. Per arm, pooled over seeds: the Spearman between the
    selecting score and the retrained mean with its bootstrap interval; per seed, Welch's one-sided test
    that multi-fidelity NSGA-II's best is below each other arm's best."""
    from workshop import cli

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        for arm, options in s["arms"]:
            name = f"{RUN_NAMES.get(arm, arm)}-seed{seed}"
            d = Path(out_dir) / name
            rc = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else None
            if rc is None or not (d / f"population_{rc['generations']:03d}.json").exists():
                argv = ["--objective", "quality_cache", "--preset", "cpu", "--seed", str(seed), "--out", out_dir,
                        "--name", name] + s["extra"] + options + (["--resume"] if rc is not None else [])
                if cli.main(argv) != 0:
                    raise RuntimeError(f"run {name} failed")
            rc, records, baselines = report.load_run(d)
            tpp = report.rate_groups(baselines)["transformer++"]
            runs.append(dict(arm=arm, seed=seed, dir=str(d), records=records, tpp=tpp,
                             top=report.select(records, tpp, rc.objective, s["top"]), rc=rc))
    steps, rseeds = s["retrain_steps"], list(s["retrain_seeds"])
    # each genome and Transformer++ over the run's --final-lrs grid, each shown at its best rate (D41)
    jobs = [(r["dir"], t["genome"], rs, steps, str(device), lr) for r in runs for t in r["top"] + [r["tpp"]]
            for lr in r["rc"].rates(r["rc"].final_lrs) for rs in rseeds]
    probe = list(s.get("probe_steps", ()))  # a halved run's promoted candidates at other budgets, under its own seed
    jobs += [(r["dir"], t["genome"], r["rc"].seed, st, str(device), r["rc"].lr) for r in runs if r["rc"].rungs
             for t in fidelity.top_rung(r["records"]) for st in probe]
    done = retrain_all(jobs, Path(out_dir) / "retrained.jsonl", s["workers"])
    out = []
    for r in runs:
        same_seed = [x for x in runs if x["seed"] == r["seed"]]
        objs = lambda x: np.array([[math.inf if v is None else v for v in y["objectives"]]  # noqa: E731
                                for y in fidelity.top_rung(x["records"])], dtype=float)
        ref = evaluation.default_ref_point(np.vstack([objs(x) for x in same_seed]))
        ppls = lambda text: at_best_rate(done, text, rseeds, steps, r["rc"].rates(r["rc"].final_lrs))  # noqa: E731
        top = [dict(genome=t["genome"], key=t["key"], score=t["perplexity"], cache=t["cache_bytes"],
                    **dict(zip(("ppls", "lr"), ppls(t["genome"])))) for t in r["top"]]
        for t in top:
            t["retrained"] = report.mean_std(t["ppls"])
        tpp_ppls, tpp_lr = ppls(r["tpp"]["genome"])
        tpp = (report.mean_std(tpp_ppls)[0], r["tpp"]["cache_bytes"])
        best = min(top, key=lambda t: t["retrained"][0]) if top else None
        trained, total = report.compute_tokens(r["rc"], r["records"])
        points = [(t["retrained"][0], t["cache"]) for t in top]
        rung = report.rung_pairs(r["records"], *r["rc"].rungs[:2]) if r["rc"].rungs else []
        out.append(dict(arm=r["arm"], seed=r["seed"], candidates=len(r["records"]),
                        top_rung=len(fidelity.top_rung(r["records"])), train_tokens=trained, compute=total,
                        hv_search=evaluation.hypervolume(objs(r), ref), ref_search=list(ref),
                        new_front=new_front_members(r["records"], r["rc"].objective), top=top,
                        best=best["retrained"][0] if best else math.inf, best_ppls=best["ppls"] if best else [],
                        best_genome=best["genome"] if best else None,
                        regret=top[0]["retrained"][0] - best["retrained"][0] if best else math.nan,
                        tpp=dict(ppls=tpp_ppls, mean=tpp[0], std=report.mean_std(tpp_ppls)[1], cache=tpp[1], lr=tpp_lr),
                        hv_linear=retrained_hypervolume(points, tpp, False),
                        hv_log=retrained_hypervolume(points, tpp, True),
                        top_spearman=report.spearman([t["score"] for t in top], [t["retrained"][0] for t in top]),
                        rung_spearman=_spearman_of(rung), probe=_probe(r, probe, done)))
    by = {(x["arm"], x["seed"]): x for x in out}
    for x in out:
        mf = by.get(("nsga2-mf", x["seed"]))
        x["welch_mf_below"] = list(welch(mf["best_ppls"], x["best_ppls"])) if mf and x is not mf and x["best_ppls"] \
            and mf["best_ppls"] else None
    spear = {}
    for arm in dict.fromkeys(x["arm"] for x in out):
        pairs = list({(x["seed"], t["key"]): (t["score"], t["retrained"][0]) for x in out if x["arm"] == arm
                      for t in x["top"]}.values())
        spear[arm] = _spearman_of(pairs)
    pairs = list({(x["seed"], t["key"]): (t["score"], t["retrained"][0]) for x in out for t in x["top"]}.values())
    spear["all"] = _spearman_of(pairs)
    return dict(runs=out, spearman=spear, retrain_steps=steps, retrain_seeds=rseeds, top=s["top"],
                median_ratio=_median_ratio(out))


def _probe(run: dict, steps: list[int], done: dict) -> dict:
    """A halved run's promoted candidates trained again at each of `steps` under the run's seed: per budget,
    the Spearman of those scores against the archived top-rung ones (how well a rung at that budget would
    have ordered them), and where the budget is one of the run's rungs, the largest difference from the
    archived score there (0 when the retraining reproduces the search's training)."""
    if not run["rc"].rungs:
        return {}
    top = [r for r in fidelity.top_rung(run["records"]) if r.get("perplexity") is not None and math.isfinite(r["perplexity"])]
    out = {}
    for st in steps:
        again = [done[_book_key(r["genome"], run["rc"].seed, st, run["rc"].lr)]["perplexity"] for r in top]
        pairs = [(a, r["perplexity"]) for a, r in zip(again, top) if math.isfinite(a)]
        archived = [(a, x["perplexity"]) for a, r in zip(again, top) for x in r["rungs"] if x["steps"] == st]
        out[str(st)] = dict(_spearman_of(pairs), reproduced=max((abs(a - b) for a, b in archived), default=None))
    return out


def _spearman_of(pairs: list[tuple[float, float]]) -> dict:
    """Count, Spearman and 95% bootstrap interval of (x, y) pairs (nan when there are none)."""
    if not pairs:
        return dict(n=0, rho=math.nan, interval=(math.nan, math.nan))
    x, y = zip(*pairs)
    return dict(n=len(pairs), rho=report.spearman(x, y), interval=report.bootstrap_spearman(x, y))


def _median_ratio(out: list[dict]) -> float:
    """NSGA-II's hypervolume at the search's fidelity over random search's, median over the seeds."""
    r = [x["hv_search"] / y["hv_search"] for x in out for y in out
         if x["arm"] == "nsga2" and y["arm"] == "random" and x["seed"] == y["seed"] and y["hv_search"] > 0]
    return float(np.median(r)) if r else math.nan


def print_efficacy(r):
    print(f"\n## Efficacy (D39): quality_cache, cpu preset, about equal compute per run; each run's top-{r['top']} "
          f"and Transformer++ retrained {r['retrain_steps']} steps under seeds {r['retrain_seeds']}, each at its best "
          "rate of the run's --final-lrs grid (D41)")
    rows = []
    for x in r["runs"]:
        w = x["welch_mf_below"]
        rows.append([x["arm"], x["seed"], f"{x['candidates']} ({x['top_rung']})", f"{x['compute'] / 1e6:.2f}M",
                     f"{x['hv_search']:.4g}", f"{x['best']:.3f} ± {report.mean_std(x['best_ppls'])[1]:.3f}",
                     f"{x['regret']:.3f}", f"{x['hv_linear']:.4g}", f"{x['hv_log']:.4g}",
                     f"{x['tpp']['mean']:.3f} ± {x['tpp']['std']:.3f}" + (f" at {x['tpp']['lr']:.3g}" if x["tpp"].get("lr") else ""),
                     " ".join(map(str, x["new_front"][1:])),
                     f"{x['top_spearman']:.2f}", "-" if not x["rung_spearman"]["n"] else
                     f"{x['rung_spearman']['rho']:.2f} over {x['rung_spearman']['n']}", "-" if w is None else f"{w[2]:.3f}"])
    print(table(["arm", "seed", "candidates (top rung)", "compute", "HV at search fidelity", "best retrained ppl",
                 "regret", "retrained HV linear", "retrained HV log10", "T++ retrained", "new front members gen 1-",
                 "top-k Spearman", "rung Spearman", "Welch p (mf best below)"], rows))
    for arm, v in r["spearman"].items():
        print(f"{arm}: Spearman(selecting score, retrained mean) {v['rho']:.2f} over {v['n']} top-k genomes, "
              f"95% bootstrap [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}]")
    print(f"NSGA-II / random hypervolume at the search's fidelity, median over seeds: {r['median_ratio']:.3f}")
    for x in r["runs"]:
        for st, v in x.get("probe", {}).items():
            again = "" if v["reproduced"] is None else f"; the archived {st}-step scores reproduced within {v['reproduced']:.2g}"
            print(f"{x['arm']} seed {x['seed']}: its promoted candidates trained {st} steps order their top-rung scores "
                  f"at Spearman {v['rho']:.2f} over {v['n']} [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}]{again}")


# ----------------------------------------------------------------------------------------------------
# Fidelity: single- against multi-fidelity NSGA-II (and random search) on a cheap copy (issue 17, D38)
# ----------------------------------------------------------------------------------------------------


def bench_fidelity(device, s) -> dict:
    """D38's tuning on a cheap copy of the problem: each arm (algorithm, rungs, eta, offspring, chosen so
    that every generation costs about the same training steps) runs a whole in-memory synthesis per seed;
    then the run's selected top-k and Transformer++ are retrained `retrain_steps` under `retrain_seeds`.
    Per run: candidates, compute (report.compute_tokens), the best retrained perplexity among the top-k,
    the regret of the chosen best, and the Spearman between the selecting score and the retrained mean,
    pooled over runs (baselines excluded)."""
    from workshop import parallel
    from workshop import run

    runs, pooled = [], {}
    for arm in s["arms"]:
        for seed in s["seeds"]:
            rc = config.RunConfig.make("cpu", **s["overrides"], seed=seed, weights=False, final_top=s["top"],
                                       **{k: v for k, v in arm.items() if k != "name"})
            t0 = time.perf_counter()
            syn = run.synthesize(rc, device=str(device), log=lambda line: None)
            search_s = time.perf_counter() - t0
            data = userdata.load_data(rc.data, rc.vocab_size)
            cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config(str(device), s["retrain_steps"])

            def retrained(text):
                ppls = []
                for rs in s["retrain_seeds"]:
                    with parallel.candidate_threads(str(device)):
                        info, _ = candidate.evaluate_genome(genome.Genome.parse(text), cfg, tcfg, data, rc, seed=rs)
                    ppls.append(info["perplexity"])
                return report.mean_std(ppls)
            tpp = next(b for b in syn.baselines if b["name"] == "transformer++")
            top = [dict(genome=r["genome"], score=r["perplexity"], cache=r["cache_bytes"], retrained=retrained(r["genome"]))
                   for r in syn.top]
            best = min((t["retrained"][0] for t in top), default=math.inf)
            trained, total = report.compute_tokens(rc, syn.records)
            rung = [report.spearman(*zip(*report.rung_pairs(syn.records, *rc.rungs[:2])))] if rc.rungs else []
            runs.append(dict(arm=arm["name"], seed=seed, candidates=len(syn.records), train_tokens=trained, compute=total,
                             new_front=new_front_members(syn.records, rc.objective),
                             search_s=search_s, top=top, best=best, tpp=retrained(tpp["genome"]),
                             regret=(top[0]["retrained"][0] - best) if top else math.nan, rung_spearman=rung))
            pooled.setdefault(arm["name"], []).extend((t["score"], t["retrained"][0]) for t in top)
            print(f"  {arm['name']} seed {seed}: {len(syn.records)} candidates, {total:,.0f} compute, best retrained "
                  f"{best:.3f}, regret {runs[-1]['regret']:.3f}, {search_s:.0f} s", flush=True)
    spear = {a: dict(rho=report.spearman(*zip(*p)), interval=report.bootstrap_spearman(*zip(*p)), n=len(p))
             for a, p in pooled.items() if len(p) > 1}
    return dict(runs=runs, spearman=spear, overrides=s["overrides"], retrain_steps=s["retrain_steps"],
                retrain_seeds=list(s["retrain_seeds"]))


def new_front_members(records: list[dict], objective: str) -> list[int]:
    """Per generation, its candidates on the front of everything evaluated up to it (the top rung's, D38)."""
    out = []
    for g in range(max((r["generation"] for r in records), default=-1) + 1):
        front = report.front_of([r for r in records if r["generation"] <= g], objective)
        out.append(sum(r["generation"] == g for r in front))
    return out


def print_fidelity(r):
    print(f"\n## Fidelity (D38): a cheap copy {r['overrides']}, top-k retrained {r['retrain_steps']} steps under seeds "
          f"{r['retrain_seeds']}")
    rows = [[x["arm"], x["seed"], x["candidates"], f"{x['compute']:,.0f}", f"{x['best']:.3f}", f"{x['regret']:.3f}",
             f"{x['tpp'][0]:.3f} ± {x['tpp'][1]:.3f}", ", ".join(f"{v:.2f}" for v in x["rung_spearman"]) or "-",
             " ".join(map(str, x.get("new_front", []))), f"{x['search_s']:.0f}"] for x in r["runs"]]
    print(table(["arm", "seed", "candidates", "compute (tokens)", "best retrained ppl", "regret", "T++ retrained",
                 "rung Spearman", "new front members per generation", "search s"], rows))
    for a, v in r["spearman"].items():
        print(f"{a}: Spearman(selecting score, retrained mean) {v['rho']:.2f} over {v['n']} top-k genomes, "
              f"95% bootstrap [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}]")


# README's seed-0 winner (canonical; GMemless, GConv-2, GMemless, three GConv-1-Diff) and the baseline
SCALED = {"seed-0 winner": "9.1.1.1.1-8.2.1.2.1-9.3.1.3.1-16.4.1.4.1-16.5.1.5.1-16.6.1.6.1", "transformer++": None}


def bench_scaling(device, s) -> dict:
    """D26's evidence: the depth-6 genomes repeated `times` (independent copies, space.repeat) at the
    preset's other settings with the overrides (width 128, 1000 steps), trained as the search trains
    (candidate.evaluate_genome, one thread on CPU) under each seed at each of `final_lrs` multiples of the
    shape's derived rate (star.derived_rate, D41); perplexity mean ± std per genome at its best rate."""
    import genome as gn
    from workshop import parallel

    rows = []
    for name, text in SCALED.items():
        base = gn.transformer_pp(6) if text is None else gn.Genome.parse(text)
        g = space.repeat(base, s["times"])
        rc = config.RunConfig.make(s["preset"], **{**s["overrides"], "depth": g.depth})
        rc = dataclasses.replace(rc, lr=star.derived_rate(rc.d_model, rc.depth))
        data = userdata.load_data(rc.data, rc.vocab_size)
        cfg = rc.model_config(data.vocab_size)
        runs = []
        for lr in rc.rates(rc.final_lrs):
            for seed in s["seeds"]:
                with parallel.candidate_threads(str(device)):
                    info, _ = candidate.evaluate_genome(g, cfg, dataclasses.replace(rc.train_config(str(device)), lr=lr),
                                                        data, rc, seed=seed, lr_grid=())
                runs.append(dict(name=name, seed=seed, lr=lr, perplexity=info["perplexity"], seconds=info["seconds"],
                                 status=info["status"]))
                print(f"  {name} seed {seed} lr {lr:.3g}: ppl {info['perplexity']:.3f} in {info['seconds']:.0f} s", flush=True)
        best = report.rate_groups(runs)[name]  # at its best rate (D41)
        rows.append(dict(name=name, base=str(base), genome=str(g), depth=g.depth, d_model=cfg.d_model, steps=rc.steps,
                         params=info["params"], cache_bytes=info["cache_bytes"], mean=best["perplexity"],
                         std=best["ppl_std"], runs=[r for r in runs if r["lr"] == best["lr"]], lr=best["lr"],
                         at_edge=best["at_edge"], rates={str(lr): v for lr, v in best["rates"].items()}))
    return dict(rows=rows, preset=s["preset"], times=s["times"])


def print_scaling(r):
    print(f"\n## Scaling (D26): depth x{r['times']} (independent copies) and the preset's width override, "
          f"{r['rows'][0]['steps'] if r['rows'] else 0} steps, seeds {[x['seed'] for x in r['rows'][0]['runs']] if r['rows'] else []}")
    print(table(["genome", "depth", "width", "params", "cache", "perplexity at the best rate", "best rate (seed means)"],
                [[x["name"], x["depth"], x["d_model"], f"{x['params']:,}", words.fmt_bytes(x["cache_bytes"]),
                  f"{x['mean']:.2f} ± {x['std']:.2f}", f"{x['lr']:.3g} (" + ", ".join(
                      f"{float(k):.3g}: {v:.2f}" for k, v in x["rates"].items()) + ("; EDGE" if x["at_edge"] else "") + ")"]
                 for x in r["rows"]]))


# ----------------------------------------------------------------------------------------------------
# Recipe: the peak learning rate measured per model, where the models live (issue 28)
# ----------------------------------------------------------------------------------------------------

def lr_grid(lo: float, hi: float, factor: float, extra=()) -> list[float]:
    """A log grid from lo to hi in steps of `factor` (3 significant digits), with the rates in `extra`."""
    out, x = set(), lo
    while x <= hi * (1 + 1e-9):
        out.add(float(f"{x:.3g}"))
        x *= factor
    return sorted(out | {float(e) for e in extra})


def recipe_models(rc: RunConfig, n_random: int, genomes=None, seed: int = 0) -> list[tuple[str, str]]:
    """(name, canonical genome) of Transformer++, StripedMamba, `genomes` (name: text; repeated to the
    run's depth) and `n_random` distinct genomes drawn as the search draws generation 0."""
    models = [(name, genome.canonical_str(make(rc.depth))) for name, make in genome.BASELINES.items()]
    for name, text in (genomes or {}).items():
        g = genome.Genome.parse(text)
        models.append((name, genome.canonical_str(space.repeat(g, rc.depth // g.depth))))
    var, rng, seen, n = rc.variation(), np.random.default_rng(seed), {t for _, t in models}, 0
    while n < n_random:
        k = var.key(var.repair(var.sample(rng), rng)[0])
        if k not in seen:
            seen.add(k)
            n += 1
            models.append((f"random {n}", k))
    return models


def _recipe_one(job: tuple) -> dict:
    """One training of the sweep: (preset, overrides, canonical genome, seed, steps, lr, device)."""
    preset, overrides, text, seed, steps, lr, device = job
    return _train_record(RunConfig.make(preset, **dict(overrides)), text, seed, steps, device, lr)


def bench_recipe(device, s, out_dir: str) -> dict:
    """Issue 28: each model's peak learning rate on a log grid, at the preset's candidate budget and at
    multiples of it (`budgets`), with the preset's recipe otherwise (AdamW, warm-up, cosine, clipping). Seed 0
    over the whole grid; the other seeds at the `top` best seed-0 rates of each model and their `near`
    neighbours; the best rate is the lowest seed mean among those. Every training is kept in
    OUT_DIR/recipe.jsonl and never repeated."""
    rc = RunConfig.make(s["preset"], **s["overrides"])
    grid = lr_grid(s["lr_min"], s["lr_max"], s["lr_factor"], extra=(s["shared"],))
    models = recipe_models(rc, s["n_random"], s.get("genomes"))
    book = Path(out_dir).expanduser() / "recipe.jsonl"
    book.parent.mkdir(parents=True, exist_ok=True)
    over, seeds, budgets = tuple(sorted(s["overrides"].items())), list(s["seeds"]), [rc.steps * b for b in s["budgets"]]
    job = lambda text, seed, steps, lr: (s["preset"], over, text, seed, steps, lr, str(device))  # noqa: E731
    keys = (lambda j: (j[2], j[3], j[4], j[5]), lambda r: (r["key"], r["seed"], r["steps"], r["lr"]))
    done = train_book([job(t, seeds[0], st, lr) for st in budgets for _, t in models for lr in grid], book,
                      s["workers"], _recipe_one, *keys)
    seed0 = lambda t, st: [done[(t, seeds[0], st, lr)]["perplexity"] for lr in grid]  # noqa: E731
    near = {(t, st): sorted({lr for i in np.argsort(seed0(t, st), kind="stable")[:s["top"]]
                             for lr in grid[max(0, int(i) - s["near"]): int(i) + s["near"] + 1]})
            for st in budgets for _, t in models}  # a noisy curve (attention at 100 steps) can dip twice
    done = train_book([job(t, sd, st, lr) for (t, st), rates in near.items() for lr in rates for sd in seeds[1:]], book,
                      s["workers"], _recipe_one, *keys)
    rows = []
    for st in budgets:
        for name, t in models:
            curve = seed0(t, st)
            at = {lr: [done[(t, sd, st, lr)]["perplexity"] for sd in seeds] for lr in near[(t, st)]}
            best = min(at, key=lambda lr: report.mean_std(at[lr])[0])
            mean, std = report.mean_std(at[best])
            rows.append(dict(name=name, genome=t, steps=st, grid=grid, seed0=curve, best_lr=best, mean=mean, std=std,
                             n=len(seeds), at_edge=best in (grid[0], grid[-1]), near={str(k): v for k, v in at.items()}))
    for st in budgets:  # what a shared rate costs each model, and where its optimum sits from Transformer++'s
        tpp = next(r for r in rows if r["steps"] == st and r["name"] == "transformer++")
        for r in (x for x in rows if x["steps"] == st):
            best0 = r["seed0"][grid.index(r["best_lr"])]
            r["loss_at_shared"] = r["seed0"][grid.index(s["shared"])] / best0 - 1
            r["loss_at_tpp_best"] = r["seed0"][grid.index(tpp["best_lr"])] / best0 - 1
            r["steps_from_tpp"] = math.log(r["best_lr"] / tpp["best_lr"]) / math.log(s["lr_factor"])
    return dict(preset=s["preset"], overrides=s["overrides"], shared=s["shared"], grid=grid, seeds=seeds,
                budgets=budgets, book=str(book), rows=rows)


def print_recipe(r):
    print(f"\n## Recipe (issue 28): the peak learning rate per model, {r['preset']} preset {r['overrides'] or ''}; "
          f"grid {r['grid'][0]:g} .. {r['grid'][-1]:g} ({len(r['grid'])} rates), seed 0 everywhere, seeds "
          f"{r['seeds']} near each optimum; the book: {r['book']}")
    for st in r["budgets"]:
        print(f"\n{st} steps")
        print(table(["model", "best lr", "perplexity at best (seed mean)", "edge", f"ppl at {r['shared']:g} (seed 0)",
                     f"loss at {r['shared']:g}", "loss at T++'s best", "optimum / T++'s (grid steps)"],
                    [[x["name"], f"{x['best_lr']:.3g}", f"{x['mean']:.3f} ± {x['std']:.3f} (n={x['n']})",
                      "EDGE" if x["at_edge"] else "", f"{x['seed0'][r['grid'].index(r['shared'])]:.3f}",
                      f"{x['loss_at_shared']:+.1%}", f"{x['loss_at_tpp_best']:+.1%}", f"{x['steps_from_tpp']:+.1f}"]
                     for x in r["rows"] if x["steps"] == st]))


# ----------------------------------------------------------------------------------------------------
# Operators per training step (issue 29 item 4): on a GPU every aten operator is a launch from the host
# ----------------------------------------------------------------------------------------------------


def count_ops(fn) -> tuple[int, dict[str, int]]:
    """The aten operators `fn()` dispatches (every call counted, views included), and the count per name."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        fn()
    return sum(c.names.values()), dict(c.names.most_common())


def _training_step(g, rc: RunConfig, device, batch: int):
    """One training step of `g` at the run's shape as train.train takes it (train._gradients with its clipping
    and syncs, then AdamW as train.train builds it), warmed once: the gradients' closure and the optimizer."""
    tcfg = rc.train_config(str(device))
    cfg = liv.ModelConfig(vocab_size=256, d_model=rc.d_model, head_dim=rc.head_dim, depth=g.depth, max_len=rc.seq_len)
    model = genome.build_model(g, cfg, seed=0).to(device).train()
    opt = torch.optim.AdamW(train.param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tcfg.betas,
                            fused=device.type == "cuda")
    params = [p for grp in opt.param_groups for p in grp["params"]]
    x = torch.randint(0, 256, (batch, rc.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.roll(x, -1, 1)
    gradients = lambda: train._gradients(model, params, x, y, batch, tcfg, device)  # noqa: E731
    gradients()  # warm: lazy state and first kernels out of any measurement
    opt.step()
    opt.zero_grad(set_to_none=True)
    return gradients, opt


def bench_ops(device, s) -> dict:
    """Aten operators of one training step at the preset's shape, as train.train runs it (forward, loss and
    backward through train._gradients with its clipping and syncs; then AdamW as train.train builds it):
    Transformer++, StripedMamba, and every class as one LIV beside a GMemless. The count does not depend
    on the sequence length or width."""
    rc = RunConfig.make(s["preset"], **s.get("overrides", {}))
    models = {name: make(rc.depth) for name, make in genome.BASELINES.items()}
    models.update({f"{liv.REGISTRY[c].name} + GMemless": genome.Genome.parse(f"{c}.1.1.1.1-9.2.1.2.1")
                   for c in s["classes"]})
    rows = []
    for name, g in models.items():
        gradients, opt = _training_step(g, rc, device, s["batch"])
        n_fb, by_name = count_ops(gradients)
        n_opt, _ = count_ops(opt.step)
        rows.append(dict(name=name, genome=genome.canonical_str(g), depth=g.depth, forward_backward=n_fb,
                         optimizer=n_opt, per_liv=n_fb / g.depth, top=dict(list(by_name.items())[:8])))
    return dict(preset=s["preset"], batch=s["batch"], seq_len=rc.seq_len, rows=rows)


def print_ops(r):
    print(f"\n## Operators per training step (issue 29 item 4): aten operators dispatched, {r['preset']} preset "
          f"shape, batch {r['batch']} x {r['seq_len']}")
    print(table(["model", "depth", "forward + backward", "per LIV", "optimizer step", "most frequent"],
                [[x["name"], x["depth"], f"{x['forward_backward']:,}", f"{x['per_liv']:.0f}", f"{x['optimizer']:,}",
                  ", ".join(f"{k} {v}" for k, v in list(x["top"].items())[:4])] for x in r["rows"]]))


def bench_profile(device, s) -> dict:
    """Issue 29 item 6: a profiler summary of `steps` training steps of each model at the preset's shape, as
    train.train runs them (train._gradients, then AdamW): host milliseconds per step, kernels per step (on
    CUDA the device kernels; on CPU the aten operators the profiler records), and on CUDA the share of the
    step's wall time the GPU is busy. Launch-bound: many kernels, the GPU idle; memory-bound: the GPU busy."""
    from torch.profiler import ProfilerActivity, profile

    rc = RunConfig.make(s["preset"], **s.get("overrides", {}))
    rows = []
    for name, make in genome.BASELINES.items():
        gradients, opt = _training_step(make(rc.depth), rc, device, rc.batch)

        def step():
            gradients()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(s["steps"]):
                step()
            sync(device)
        wall = (time.perf_counter() - t0) / s["steps"]
        events = prof.events()
        if device.type == "cuda":
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time for e in kernels) / 1e6 / s["steps"]  # device_time in microseconds
        else:
            kernels = [e for e in events if e.name.startswith("aten::")]
            busy = None
        rows.append(dict(name=name, host_ms_per_step=1000 * wall, kernels_per_step=len(kernels) / s["steps"],
                         gpu_busy_share=None if busy is None else busy / wall))
    return dict(preset=s["preset"], steps=s["steps"], shape=dict(batch=rc.batch, seq_len=rc.seq_len, d_model=rc.d_model,
                                                                  depth=rc.depth), rows=rows)


def print_profile(r):
    sh = r["shape"]
    print(f"\n## Profile (issue 29 item 6): {r['steps']} training steps at the {r['preset']} preset's shape "
          f"(batch {sh['batch']} x {sh['seq_len']}, d {sh['d_model']}, depth {sh['depth']})")
    print(table(["model", "host ms / step", "kernels / step", "GPU busy"],
                [[x["name"], f"{x['host_ms_per_step']:.1f}", f"{x['kernels_per_step']:.0f}",
                  "-" if x["gpu_busy_share"] is None else f"{x['gpu_busy_share']:.0%}"] for x in r["rows"]]))


# ----------------------------------------------------------------------------------------------------
# Proxies: the formulas against the clock (issue 18, DESIGN.md D34)
# ----------------------------------------------------------------------------------------------------

PROXY_FORMULAS = ("params", "cache_bytes")


def bench_proxies(device, s) -> dict:
    """`n` random genomes at the cpu preset's depth and the baselines, measured by meter.py at the deployment
    shape; Spearman between each formula the search uses (parameters, cache bytes at T = 4096, at the cpu
    preset's width) and each measurement at each context; the measurements' spread and cost; and the ratio
    to Transformer++ of a few genomes measured alone and beside a busy process."""
    pc = config.PRESETS["cpu"]
    depth = pc.depth
    cfg = config.RunConfig.make("cpu").model_config(256)
    shape = meter.Shape(d_model=s["d"], head_dim=s["head_dim"], contexts=tuple(s["contexts"]), device=str(device),
                        dtype="bfloat16" if device.type == "cuda" else "float32", prefill_repeats=s["repeats"],
                        decode_steps=s["steps"], retries=s["retries"])
    rng = np.random.default_rng(18)
    genomes = [make(depth) for make in genome.BASELINES.values()] + [genome.random_genome(depth, rng) for _ in range(s["n"])]
    rows, t_all = [], time.perf_counter()
    for i, g in enumerate(genomes):
        t0 = time.perf_counter()
        rec = meter.measure(g, shape)
        rows.append(dict(genome=str(g), **candidate.describe_costs(g, cfg, 4096), metrics=rec["metrics"],
                         spreads={c: r["spreads"] for c, r in rec["raw"].items()}, seconds=time.perf_counter() - t0,
                         load=os.getloadavg()[0]))
        if (i + 1) % 10 == 0:  # a run cut off keeps what it measured
            Path("bench_proxies.partial.json").write_text(json.dumps(rows))
            print(f"  proxies: {i + 1}/{len(genomes)} measured, {time.perf_counter() - t_all:.0f} s, load {os.getloadavg()[0]:.2f}",
                  flush=True)
    kinds = ("ttft_ms", "decode_ms", "memory_bytes")
    rho = {f: {f"{k}@{c}": report.spearman([r[f] for r in rows], [r["metrics"][f"{k}@{c}"] for r in rows])
               for c in shape.contexts for k in kinds} for f in PROXY_FORMULAS}
    kept = [sp[-1] if len(sp) == 1 else min(sp) for r in rows for sp in r["spreads"].values()]
    tpp = rows[0]
    return dict(shape=dataclasses.asdict(shape), depth=depth, n=len(rows), spearman=rho, rows=rows,
                spread_median=statistics.median(kept), spread_over_5pct=sum(x > 0.05 for x in kept) / len(kept),
                seconds_per_genome=statistics.median(r["seconds"] for r in rows),
                load_median=statistics.median(r["load"] for r in rows),
                tpp=dict(tpp["metrics"]), stability=_proxy_stability(genomes[2:2 + s["stability"]], shape, genomes[0]))


def _proxy_stability(genomes, shape, tpp) -> list[dict]:
    """decode and first-token ratios to Transformer++, measured side by side alone and beside a busy process."""
    import subprocess

    def ratios(g):
        a, b = meter.measure(g, shape)["metrics"], meter.measure(tpp, shape)["metrics"]
        return {k: a[k] / b[k] for k in ("ttft_ms", "decode_ms")}
    out = []
    for g in genomes:
        quiet = ratios(g)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = ratios(g)
        finally:
            busy.kill()
            busy.wait()
        out.append(dict(genome=str(g), quiet=quiet, busy=loaded,
                        change={k: loaded[k] / quiet[k] - 1 for k in quiet}, load=os.getloadavg()[0]))
    return out


def print_proxies(r):
    sh = r["shape"]
    cols = [f"{k}@{c}" for c in sh["contexts"] for k in ("ttft_ms", "decode_ms", "memory_bytes")]
    print(f"\n## Proxies: Spearman between the formulas and the clock, {r['n']} genomes (depth {r['depth']}, the baselines "
          f"and random ones), measured at width {sh['d_model']}, {sh['dtype']}, batch 1, {sh['threads']} thread(s)")
    print(table(["formula"] + cols, [[f] + [f"{r['spearman'][f][c]:+.2f}" for c in cols] for f in PROXY_FORMULAS]))
    print(f"spread (MAD/median) of the kept attempt: median {r['spread_median']:.1%}, {r['spread_over_5pct']:.0%} over 5%; "
          f"{r['seconds_per_genome']:.1f} s per genome; load average median {r['load_median']:.2f}")
    for x in r["stability"]:
        print(f"ratio to Transformer++ beside a busy process: {x['genome']}: decode {x['quiet']['decode_ms']:.3f} -> "
              f"{x['busy']['decode_ms']:.3f} ({x['change']['decode_ms']:+.1%}), first token {x['quiet']['ttft_ms']:.3f} -> "
              f"{x['busy']['ttft_ms']:.3f} ({x['change']['ttft_ms']:+.1%})")


def targets(res: dict) -> list[dict]:
    out = []

    def add(name, value, limit, ok, unit=""):
        out.append(dict(target=name, value=value, limit=limit, met=bool(ok), unit=unit))

    if "transformer" in res:
        add("Transformer++ decoded / plain Llama step time", res["transformer"]["ratio"], 1.05,
            res["transformer"]["ratio"] <= 1.05, "x")
    if "classes" in res:
        c = res["classes"]
        add(f"slowest class ({c['slowest']['name']}) / SA-1 step time", c["slowest"]["time_vs_sa1"], 4.0,
            c["slowest"]["time_vs_sa1"] <= 4, "x")
        add(f"largest class ({c['largest']['name']}) / SA-1 peak memory", c["largest"]["mem_vs_sa1"], 4.0,
            c["largest"]["mem_vs_sa1"] <= 4, "x")
    if "variation" in res:
        v = res["variation"]
        add("offspring needing repair, mutation and crossover (D18)", max(v["mutation"], v["crossover_liv"]), 0.20,
            max(v["mutation"], v["crossover_liv"]) <= 0.20)
    if "efficacy" in res:
        add("NSGA-II / random hypervolume, median over seeds", res["efficacy"]["median_ratio"], 1.10,
            res["efficacy"]["median_ratio"] >= 1.10, "x")
    if "proxies" in res:
        p = res["proxies"]
        add("measured spread (MAD/median), median over genomes and contexts", p["spread_median"], 0.05,
            p["spread_median"] <= 0.05)
        worst = max((abs(v) for x in p["stability"] for v in x["change"].values()), default=0.0)
        add("ratio to Transformer++ beside a busy process, largest change", worst, 0.10, worst <= 0.10)
    if "search" in res and "skipped" not in res["search"]:
        add("search overhead / generation", res["search"]["overhead_share"], 0.01, res["search"]["overhead_share"] < 0.01)
    return out


def main(argv=None) -> int:
    ap = words.OneLineParser(prog="python -m workshop.bench", description="STAR speed benchmarks: prints a table, writes JSON.")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: the GPU shapes under bf16 autocast)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections of {','.join(SECTIONS + ON_DEMAND)}, run in this order "
                         "(default: all but the last 7)")
    ap.add_argument("--out", default="bench.json", help="where to write the JSON (default bench.json)")
    ap.add_argument("--efficacy-dir", default="runs/efficacy", help="where the efficacy section keeps its runs")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the efficacy section (comma-separated)")
    ap.add_argument("--recipe-dir", default="runs/recipe", help="where the recipe sections keep their book of trainings")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS + ON_DEMAND]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS + ON_DEMAND)}")
    if not only:
        ap.error(f"--only names no section; choose from {', '.join(SECTIONS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device}: choose cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    try:  # before the run, not after it
        words.check_output_file(args.out, "--out")
    except ValueError as e:
        ap.error(str(e))
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers")
    sizes = SIZES["quick" if args.quick else device.type]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    meta = dict(device=str(device), device_name=dev_name, torch=torch.__version__, threads=torch.get_num_threads(),
                cpus=os.cpu_count(), python=platform.python_version(), quick=args.quick, sections=only)
    print(f"# bench.py on {dev_name} ({device}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs{', --quick' if args.quick else ''}")
    print("# times are medians of interleaved repeats after warm-up; ratios are measured side by side in this process")
    run = dict(classes=(bench_classes, print_classes), scan=(bench_scan, print_scan), conv=(bench_conv, print_conv),
               transformer=(bench_transformer, print_transformer), decode=(bench_decode, print_decode),
               search=(lambda d, s: bench_search(d, s, args.quick), print_search), variation=(bench_variation, print_variation),
               efficacy=(lambda d, s: bench_efficacy(d, s, args.efficacy_dir, seeds), print_efficacy),
               memory=(bench_memory, print_memory), parallel=(bench_parallel, print_parallel),
               threads=(bench_threads, print_threads), noise=(bench_noise, print_noise),
               scaling=(bench_scaling, print_scaling), proxies=(bench_proxies, print_proxies),
               fidelity=(bench_fidelity, print_fidelity),
               recipe=(lambda d, s: bench_recipe(d, s, args.recipe_dir), print_recipe),
               recipe_scaled=(lambda d, s: bench_recipe(d, s, os.path.join(args.recipe_dir, "scaled")), print_recipe),
               ops=(bench_ops, print_ops), profile=(bench_profile, print_profile))
    res, t_all = dict(meta=meta), time.perf_counter()
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(only):  # in the order given (gpu_check.py puts the most wanted first)
        t0 = time.perf_counter()
        res[name] = run[name][0](device, sizes[name])
        res[name]["wall_s"] = time.perf_counter() - t0
        run[name][1](res[name])
        print(f"({name}: {res[name]['wall_s']:.1f} s)", flush=True)
        out.write_text(json.dumps(res, indent=1))  # after each section: a run cut off still reports
    res["targets"] = targets(res)
    res["meta"]["wall_s"] = time.perf_counter() - t_all
    print("\n## Targets")
    for t in res["targets"]:
        v = f"{t['value']:.2%}" if t["unit"] == "" else f"{t['value']:.2f}{t['unit']}"
        lim = f"{t['limit']:.0%}" if t["unit"] == "" else f"{t['limit']}{t['unit']}"
        print(f"{'MET   ' if t['met'] else 'MISSED'}  {t['target']}: {v} (target {'>=' if 'hypervolume' in t['target'] else '<='} {lim})")
    if device.type == "cpu":
        print("(GPU targets — chunked scan >= 10x loop, FFT >= 5x direct at l 4096, >= 35% MFU — need --device cuda; "
              "not measured here)")
    print(f"\nwall time {res['meta']['wall_s']:.1f} s; JSON written to {args.out}")
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
