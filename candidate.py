"""One candidate: a genome decoded once, built, trained and scored on the run's objectives (D16).

This is what every driver calls for one genome (star.py in its own process for the baselines and the
retraining, parallel.py's workers and Ray tasks for the search's candidates): below the drivers, so
that a worker imports it without importing them.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

import genome
import liv
import plugins
import train
from config import RunConfig, metrics_of

# errors after which a CUDA context is unusable: the worker (or the in-process run) must end
STICKY_CUDA = ("illegal memory access", "CUDA error", "cuFFT", "device-side assert")


def describe_costs(g, cfg: liv.ModelConfig, cache_len: int) -> dict:
    """Parameters and cache of a genome (or of its already decoded plans), analytic, without building
    the model."""
    pc = genome.count_params(g, cfg)
    return dict(params=pc["total"], non_embedding_params=pc["non_embedding"],
                cache_bytes=genome.cache_bytes(g, cfg, seq_len=cache_len))


def evaluate_genome(g: genome.Genome, cfg: liv.ModelConfig, tcfg: train.TrainConfig, data, config: RunConfig,
                    seed: int | None = None) -> tuple[dict, tuple[float, ...]]:
    """Train one candidate and score it. A failure (divergence, OOM, exception) gives infinite
    objectives and the error, and the run goes on (D16). `seed` (default: the run's) seeds the initial
    weights and the training (batch order). A CUDA error that poisons the process is status
    'cuda_error' (parallel.py ends the worker, or the run)."""
    if seed is not None:
        tcfg = dataclasses.replace(tcfg, seed=seed)
    seed = tcfg.seed
    t0 = time.time()
    model = None
    plans = genome.plans(g)  # decoded once: counted, sized and built from the same plans
    info = dict(describe_costs(plans, cfg, config.cache_len), perplexity=math.inf, val_loss=math.inf,
                bits_per_byte=None, status="error", error="", seconds=0.0)
    try:
        model = genome.build_model(plans, cfg, seed=seed)
        measured = liv.measure_cache_bytes(model, config.cache_len)  # DESIGN.md §5: analytic == measured
        info["cache_bytes_measured"] = measured
        if measured != info["cache_bytes"]:
            raise RuntimeError(f"cache mismatch: analytic {info['cache_bytes']} != measured {measured}")
        res = train.train(model, data, tcfg, log=None)
        info.update(perplexity=res.val_ppl, val_loss=res.val_loss, bits_per_byte=res.bits_per_byte,
                    train_loss=res.train_loss, tokens_per_s=res.tokens_per_s, status=res.status, error=res.error)
        if res.status == "ok" and plugins.METRICS:  # a --plugin's metrics of the trained model (D28)
            info.update(plugins.compute(g, model, res))
    except torch.cuda.OutOfMemoryError as e:
        info.update(status="oom", error=str(e).splitlines()[0])
    except Exception as e:  # a candidate that raises must not stop the search (D16)
        error = f"{type(e).__name__}: {e}"
        info.update(status="cuda_error" if is_sticky_cuda_error(error) else "error", error=error)
    if info["status"] == "oom":  # here, not in `except`: the traceback that held the tensors is gone
        model = None
        train.release_memory()
    info["seconds"] = round(time.time() - t0, 3)
    return info, objectives_of(info, config.objective)


def objectives_of(info: dict, objective: str) -> tuple[float, ...]:
    """The minimised objective vector of an evaluation: inf everywhere when it failed (D16). A metric not
    in `info` is inf: the measured ones (D25) are added in the main process, which computes this again."""
    ok = info["status"] == "ok" and math.isfinite(info["perplexity"])
    return tuple(float(info.get(m, math.inf)) if ok else math.inf for m in metrics_of(objective))


def is_sticky_cuda_error(message: str) -> bool:
    return any(s in message for s in STICKY_CUDA)
