"""Plugins: modules named with --plugin that register metrics of their own (DESIGN.md D37).

A plugin is an importable module (on PYTHONPATH or in the current folder). It is recorded in
config.json and imported wherever a run is made or read: in the main process (RunConfig imports its
plugins when it is made, so --resume and --compare do too), and in every worker process and Ray task
(parallel.py) before a candidate is evaluated. Importing it registers its metrics:

    import plugins

    def embedding_share(genome, model, result):      # the genome, the built model, train.TrainResult
        n = sum(p.numel() for p in model.parameters())
        return model.embed.weight.numel() / n

    plugins.register_metric("embedding_share", embedding_share, label="share of parameters in the embedding")

A registered metric is computed for every candidate that trained (candidate.evaluate_genome), written
into its archive record, and accepted wherever a metric is: in a comma list of --objective, in the
summary, the picture and --compare. LIV classes cannot be registered: the genome's class ids are a
fixed table (D8) that the reference tier validates, counts and draws from.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable          # fn(genome, model, train result) -> float, minimised when it is an objective
    label: str


METRICS: dict[str, Metric] = {}


def register_metric(name: str, fn: Callable, label: str | None = None) -> None:
    """Register `fn(genome, model, result) -> float` as the metric `name` (again: replaced)."""
    if not name or "," in name or "@" in name or name != name.strip():
        raise ValueError(f"metric name {name!r}: a plain word without ',' or '@'")
    METRICS[name] = Metric(name, fn, label or name)


def load(modules) -> None:
    """Import the plugin modules (the current folder is searched too); ImportError when one is missing."""
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        importlib.import_module(name)


def compute(g, model, result) -> dict:
    """Every registered metric of a trained candidate."""
    return {name: float(m.fn(g, model, result)) for name, m in METRICS.items()}
