"""One candidate: a genome decoded once, built, trained and scored on the run's objectives (D16), and
its weights kept when asked (D24).

This is what every driver calls for one genome (star.py in its own process for the baselines and the
retraining, parallel.py's workers and Ray tasks for the search's candidates): below the drivers, so
that a worker imports it without importing them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

import genome
import liv
import plugins
import train
from config import RunConfig, metrics_of

# Errors after which a CUDA context is unusable, so the worker (or the in-process run) must end: a kernel
# that faulted or asserted poisons every later call of the process. Allocation failures and refused launches
# leave the context usable: those candidates fail alone (status oom or error) and the worker goes on. A
# CUDA, cuFFT or cuBLAS error that is neither is treated as poisoning: a fresh worker costs seconds, a
# poisoned one would fail every candidate after it.
STICKY_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
               "illegal instruction", "launch timed out", "uncorrectable ECC", "hardware stack error",
               "CUFFT_INTERNAL_ERROR", "CUBLAS_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_INTERNAL_ERROR")
RECOVERABLE_CUDA = ("out of memory", "CUFFT_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED",
                    "invalid argument", "invalid configuration argument", "too many resources requested for launch",
                    "no kernel image is available")
CUDA_LIBRARIES = ("CUDA error", "cuFFT", "CUFFT_", "CUBLAS_", "cuDNN", "CUDNN_")


def describe_costs(g, cfg: liv.ModelConfig, cache_len: int) -> dict:
    """Parameters and cache of a genome (or of its already decoded plans), analytic, without building
    the model."""
    pc = genome.count_params(g, cfg)
    return dict(params=pc["total"], non_embedding_params=pc["non_embedding"],
                cache_bytes=genome.cache_bytes(g, cfg, seq_len=cache_len))


def evaluate_genome(g: genome.Genome, cfg: liv.ModelConfig, tcfg: train.TrainConfig, data, config: RunConfig,
                    seed: int | None = None, keep: Optional[Callable] = None) -> tuple[dict, tuple[float, ...]]:
    """Train one candidate and score it. A failure (divergence, OOM, exception) gives infinite
    objectives and the error, and the run goes on (D16). `seed` (default: the run's) seeds the initial
    weights and the training (batch order). A CUDA error that poisons the process is status
    'cuda_error' (parallel.py ends the worker, or the run). `keep(model, state, info, tcfg)`, given,
    receives a trained candidate with its final training state (`train.train_state`), to save it (D24)."""
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
        final = {}
        res = train.train(model, data, tcfg, log=None, checkpoint=final.update if keep is not None else None)
        info.update(perplexity=res.val_ppl, val_loss=res.val_loss, bits_per_byte=res.bits_per_byte,
                    train_loss=res.train_loss, tokens_per_s=res.tokens_per_s, status=res.status, error=res.error)
        if res.status == "ok" and plugins.METRICS:  # a --plugin's metrics of the trained model (D37)
            info.update(plugins.compute(g, model, res))
        if keep is not None and info["status"] == "ok":
            keep(model, final, info, tcfg)
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
    in `info` is inf: the measured ones (D34) are added in the main process, which computes this again."""
    ok = info["status"] == "ok" and math.isfinite(info["perplexity"])
    return tuple(float(info.get(m, math.inf)) if ok else math.inf for m in metrics_of(objective))


def is_sticky_cuda_error(message: str) -> bool:
    """Does this error poison the process's CUDA context (STICKY_CUDA above)?"""
    if any(s in message for s in STICKY_CUDA):
        return True
    return any(s in message for s in CUDA_LIBRARIES) and not any(s in message for s in RECOVERABLE_CUDA)


# ----------------------------------------------------------------------------------------------------
# A trained candidate's weights (D24): a folder with train.py's checkpoint and a small JSON description
# ----------------------------------------------------------------------------------------------------

WEIGHTS_FORMAT = "star-weights-1"
WEIGHTS_JSON = "config.json"


def weights_name(key: str) -> str:
    """The folder of a genome's weights under a run's weights/: a short hash of its canonical key (a
    depth-24 key is too long for a file name), the same whatever its rank."""
    return "g" + hashlib.sha256(key.encode()).hexdigest()[:10]


def save_weights(folder: Path, model, state: dict, info: dict, g: genome.Genome, cfg: liv.ModelConfig,
                 tcfg: train.TrainConfig, config: RunConfig, **extra) -> dict:
    """Write `folder/checkpoint.pt` (train.py's checkpoint: weights, optimizer, data position: it samples,
    exports and trains on) and then `folder/config.json` (genome, canonical form, widths, vocabulary,
    training recipe, data, score, and `extra`), each atomically; config.json last, so a folder that has
    one is complete. Returns the description."""
    folder = Path(folder)
    data = {"data": config.data, "vocab_size": config.vocab_size}
    text = genome.canonical_str(g)  # one spelling (the model is built from plans(g), the same for both)
    train.save_checkpoint(folder / train.CHECKPOINT_FILE, model, text, cfg, tcfg, state=state, data=data)
    about = dict(format=WEIGHTS_FORMAT, genome=text, canonical=text,
                 vocab_size=cfg.vocab_size, d_model=cfg.d_model, depth=cfg.depth, head_dim=cfg.head_dim,
                 model_config=cfg.to_dict(), recipe=tcfg.to_dict(), data=data,
                 score={k: info.get(k) for k in ("perplexity", "val_loss", "bits_per_byte", "train_loss")},
                 params=info.get("params"), non_embedding_params=info.get("non_embedding_params"),
                 cache_bytes=info.get("cache_bytes"), cache_len=config.cache_len, plugins=list(config.plugins),
                 files=dict(checkpoint=train.CHECKPOINT_FILE), **extra)
    tmp = folder / (WEIGHTS_JSON + ".tmp")
    tmp.write_text(json.dumps(about, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, folder / WEIGHTS_JSON)
    return about


def read_weights(folder: Path) -> Optional[dict]:
    """The description of a complete weights folder, or None."""
    try:
        about = json.loads((Path(folder) / WEIGHTS_JSON).read_text())
    except (OSError, ValueError):
        return None
    return about if isinstance(about, dict) and about.get("format") == WEIGHTS_FORMAT else None
