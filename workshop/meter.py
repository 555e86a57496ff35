"""What a backbone costs where it is deployed, measured: time to first token, decode latency per token,
peak memory (DESIGN.md D34).

The formulas of genome.py (parameters, cache bytes) are proxies; this module measures the model itself,
freshly initialised (latency and memory do not depend on trained weights), at a *deployment shape*
(`Shape`: width, head width, context lengths, dtype, device, threads) that may be larger than the
width the search trains. The genome fixes the depth and the layers. Per context length T:

    ttft_ms@T         prefill of T tokens into a fresh decode cache, batch 1 (median over repeats)
    decode_ms@T       one decoded token with T tokens cached, batch 1: the median (p50) ...
    decode_p95_ms@T   ... and the 95th percentile over the decoded tokens
    memory_bytes@T    peak memory of that prefill plus a few decoded tokens: the weights plus the peak
                      of live allocations above them (cache, activations, transients), measured

and the same names without `@T` for the longest context. A repeat is one prefill or one decoded
token, timed after `warmup` untimed ones. A context whose spread (median absolute deviation over the
median, the larger of prefill's and decode's) is above `max_spread` is measured again, up to
`retries` times, and the attempt with the smallest spread is kept; every record keeps its raw repeats,
its spread, its attempts and the thread count.

Clocks: on CPU `time.perf_counter` with `threads` intra-op threads (default 1); on CUDA CUDA events
with a synchronisation after each call. Memory: on CPU the torch profiler's allocation events replayed
in order (torch keeps no CPU allocator statistics; bench.py measures training steps the same way); on
CUDA `max_memory_allocated`.

`reference_ratios` divides a genome's metrics by those of Transformer++ of the same depth and shape
measured in the same window (`*_ratio` names), which cancels much of a busy machine's drift.
`standin` is a deterministic stand-in with the same record layout, computed from the formulas, for
tests (kill points, worker parity) where a clock would make runs irreproducible.

Stands on liv and genome only; nothing in the reference tier imports it.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import genome
import liv

KINDS = ("ttft_ms", "decode_ms", "decode_p95_ms", "memory_bytes")  # measured per context
RATIOS = {"ttft_ms": "ttft_ratio", "decode_ms": "decode_ratio", "memory_bytes": "memory_ratio"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MEMORY_STEPS = 4  # decoded tokens after the prefill in the memory pass


@dataclass(frozen=True)
class Shape:
    """The deployment shape and the measuring protocol (the defaults are the CPU shape of D34)."""
    d_model: int = 256
    head_dim: int = 64
    contexts: tuple = (1024, 4096)
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 1
    vocab_size: int = 256
    prefill_repeats: int = 3
    decode_steps: int = 32
    warmup: int = 1
    max_spread: float = 0.05
    retries: int = 2

    def model_config(self, depth: int) -> liv.ModelConfig:
        return liv.ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, depth=depth, head_dim=self.head_dim,
                               max_len=max(self.contexts) + self.warmup + self.decode_steps + MEMORY_STEPS + 1)


def metric_names(contexts) -> tuple[str, ...]:
    """Every metric a measurement gives, for these context lengths."""
    per = tuple(f"{k}@{c}" for c in contexts for k in KINDS)
    ratios = tuple(f"{r}@{c}" for c in contexts for r in RATIOS.values())
    return KINDS + tuple(RATIOS.values()) + per + ratios


def spread(xs) -> float:
    """Median absolute deviation over the median (0 for fewer than 2 values)."""
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    return statistics.median(abs(x - med) for x in xs) / med if med > 0 else 0.0


def percentile(xs, q: float) -> float:
    """The q-th percentile, linear between order statistics."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ start/stop log lines (they go to file descriptor 2, not sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn, device) -> int:
    """Peak bytes allocated by torch while fn() runs, above what was allocated before: CUDA's allocator
    statistics, or on CPU the profiler's allocation events replayed in order."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:  # n < 0 for a free
        live += n
        peak = max(peak, live)
    return peak


def _clock(device: torch.device) -> Callable[[Callable], float]:
    """Seconds one call of fn takes: perf_counter on CPU, CUDA events (synchronised) on CUDA."""
    if device.type != "cuda":
        def cpu(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        return cpu

    def cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    return cuda


def _time_context(model, ctx: int, shape: Shape, device, clock) -> dict:
    """One attempt at context ctx: prefill repeats (each into a fresh cache), then decode steps from
    the last prefill's cache. Milliseconds."""
    gen = torch.Generator().manual_seed(ctx)
    idx = torch.randint(0, shape.vocab_size, (1, ctx), generator=gen).to(device)
    tok = torch.randint(0, shape.vocab_size, (1, 1), generator=gen).to(device)
    T = ctx + shape.warmup + shape.decode_steps + 1
    ttft, decode = [], []
    for i in range(shape.warmup + shape.prefill_repeats):
        cache = model.new_cache(1, T)
        t = clock(lambda: model(idx, cache))
        if i >= shape.warmup:
            ttft.append(t * 1e3)
    for i in range(shape.warmup + shape.decode_steps):
        t = clock(lambda: model(tok, cache))
        if i >= shape.warmup:
            decode.append(t * 1e3)
    return dict(ttft_ms=ttft, decode_ms=decode, spread=max(spread(ttft), spread(decode)))


@contextlib.contextmanager
def _threads(shape: Shape):
    """`shape.threads` intra-op threads on CPU for the block (restored after)."""
    before = torch.get_num_threads()
    if shape.device == "cpu":
        torch.set_num_threads(shape.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(g: genome.Genome, shape: Shape = Shape(), seed: int = 0) -> dict:
    """Measure one genome at `shape`: {"metrics": {name: value}, "raw": per context the repeats, their
    spread and attempts, "shape", "threads"}."""
    device = torch.device(shape.device)
    clock = _clock(device)
    with _threads(shape), torch.no_grad():
        model = genome.build_model(genome.plans(g), shape.model_config(g.depth), seed=seed)
        model = model.to(device=device, dtype=DTYPES[shape.dtype]).eval()
        weights = sum(t.numel() * t.element_size() for t in {id(t): t for t in
                      [*model.parameters(), *model.buffers()]}.values())
        metrics, raw = {}, {}
        for ctx in shape.contexts:
            attempts = []
            for _ in range(shape.retries + 1):
                attempts.append(_time_context(model, ctx, shape, device, clock))
                if attempts[-1]["spread"] <= shape.max_spread:
                    break
            best = min(attempts, key=lambda a: a["spread"])

            def prefill_decode(ctx=ctx):
                cache = model.new_cache(1, ctx + MEMORY_STEPS)
                model(torch.zeros(1, ctx, dtype=torch.long, device=device), cache)
                for _ in range(MEMORY_STEPS):
                    model(torch.zeros(1, 1, dtype=torch.long, device=device), cache)
            peak = peak_bytes(prefill_decode, device)
            metrics.update({f"ttft_ms@{ctx}": statistics.median(best["ttft_ms"]),
                            f"decode_ms@{ctx}": statistics.median(best["decode_ms"]),
                            f"decode_p95_ms@{ctx}": percentile(best["decode_ms"], 95),
                            f"memory_bytes@{ctx}": weights + peak})
            raw[str(ctx)] = dict(best, attempts=len(attempts), spreads=[a["spread"] for a in attempts],
                                 weights_bytes=weights, peak_alloc_bytes=peak)
    return _record(metrics, raw, shape)


def _record(metrics: dict, raw: dict, shape: Shape) -> dict:
    longest = max(shape.contexts)
    metrics.update({k: metrics[f"{k}@{longest}"] for k in KINDS})
    return dict(metrics=metrics, raw=raw, shape=asdict(shape), threads=shape.threads if shape.device == "cpu" else None)


def standin(g: genome.Genome, shape: Shape = Shape(), seed: int = 0) -> dict:
    """A deterministic stand-in for `measure`, from the formulas (same layout; tests only): prefill
    linear in parameters and context, decode in parameters and cache, memory weights + 2x the cache."""
    cfg = shape.model_config(g.depth)
    plans = genome.plans(g)
    params = genome.count_params(plans, cfg)["total"]
    metrics, raw = {}, {}
    for ctx in shape.contexts:
        cache = genome.cache_bytes(plans, cfg, seq_len=ctx)
        ttft, dec = 1e-6 * params * ctx / 100, 0.2 + 1e-6 * params + 1e-6 * cache
        metrics.update({f"ttft_ms@{ctx}": ttft, f"decode_ms@{ctx}": dec, f"decode_p95_ms@{ctx}": 1.1 * dec,
                        f"memory_bytes@{ctx}": 4 * params + 2 * cache + 4 * ctx * cfg.d_model})
        raw[str(ctx)] = dict(ttft_ms=[ttft] * shape.prefill_repeats, decode_ms=[dec] * shape.decode_steps, spread=0.0,
                             attempts=1, spreads=[0.0])
    return _record(metrics, raw, shape)


METERS = {"clock": measure, "standin": standin}


def reference_ratios(metrics: dict, reference: dict) -> dict:
    """`*_ratio` metrics: each measured metric over the reference's (Transformer++ in the same window)."""
    out = {}
    for name, v in metrics.items():
        kind, _, ctx = name.partition("@")
        if kind in RATIOS and reference.get(name):
            out[RATIOS[kind] + (f"@{ctx}" if ctx else "")] = v / reference[name]
    return out
