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
import os
from pathlib import Path
from typing import Callable, Optional

import genome
import liv
import star
import train
from workshop import plugins, training
from workshop.config import RunConfig, metrics_of

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


describe_costs = star.describe_costs  # parameters and cache by formula, without building the model


def evaluate_genome(g: genome.Genome, cfg: liv.ModelConfig, tcfg: train.TrainConfig, data, config: RunConfig,
                    seed: int | None = None, keep: Optional[Callable] = None,
                    lr_grid: Optional[tuple] = None) -> tuple[dict, tuple[float, ...]]:
    """star.evaluate_genome with what a run adds: a --plugin's metrics of the trained model (D37), its
    weights given to `keep(model, state, info, tcfg)` with the final training state (`train.train_state`,
    D24), a CUDA error that poisons the process as status 'cuda_error' (parallel.py then ends the worker,
    or the run), and the memory of an out-of-memory candidate given back. With `lr_grid` (multiples of
    tcfg.lr; default the run's --lr-grid) it trains at each rate and is scored at its best (D41): the
    record of that training, with `lr_scores` {rate: perplexity} and the seconds of all. Every record
    holds its `lr`. Returns (info, objectives)."""
    tcfg = tcfg if seed is None else dataclasses.replace(tcfg, seed=seed)
    grid = config.lr_grid if lr_grid is None else lr_grid
    if grid:
        runs = []  # `keep` is for one training at one rate (a grid keeps no weights)
        for m in grid:
            runs.append(evaluate_genome(g, cfg, dataclasses.replace(tcfg, lr=tcfg.lr * m), data, config, lr_grid=())[0])
            if runs[-1]["status"] == "cuda_error":  # the process must end (parallel.py): say so at once
                return runs[-1], objectives_of(runs[-1], config.objective)
        ok = [r for r in runs if r["status"] == "ok"] or runs[:1]
        info = dict(min(ok, key=lambda r: r["perplexity"]), seconds=round(sum(r["seconds"] for r in runs), 3),
                    lr_scores={str(r["lr"]): r["perplexity"] if r["status"] == "ok" else None for r in runs})
        return info, objectives_of(info, config.objective)
    final = {}

    def trained(model, result, info):
        if plugins.METRICS:
            info.update(plugins.compute(g, model, result))
        if keep is not None:
            keep(model, final, info, tcfg)
    info = star.evaluate_genome(g, cfg, tcfg, data, config.cache_len, trained=trained,
                                checkpoint=final.update if keep is not None else None, plan=training.plan)
    info["lr"] = tcfg.lr
    if info["status"] == "error" and is_sticky_cuda_error(info["error"]):
        info["status"] = "cuda_error"
    if info["status"] == "oom":  # the model and its traceback are gone with star.evaluate_genome's frame
        train.release_memory()
    return info, objectives_of(info, config.objective)


def objectives_of(info: dict, objective: str) -> tuple[float, ...]:
    """star.objectives_of for any objective of the run: inf everywhere when it failed (D16). A metric not
    in `info` is inf: the measured ones (D34) are added in the main process, which computes this again."""
    return star.objectives_of(info, metrics_of(objective))


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
    training.save_checkpoint(folder / training.CHECKPOINT_FILE, model, text, cfg, tcfg, state=state, data=data)
    about = dict(format=WEIGHTS_FORMAT, genome=text, canonical=text,
                 vocab_size=cfg.vocab_size, d_model=cfg.d_model, depth=cfg.depth, head_dim=cfg.head_dim,
                 model_config=cfg.to_dict(), recipe=tcfg.to_dict(), data=data,
                 score={k: info.get(k) for k in ("perplexity", "val_loss", "bits_per_byte", "train_loss")},
                 params=info.get("params"), non_embedding_params=info.get("non_embedding_params"),
                 cache_bytes=info.get("cache_bytes"), cache_len=config.cache_len, plugins=list(config.plugins),
                 files=dict(checkpoint=training.CHECKPOINT_FILE), **extra)
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
