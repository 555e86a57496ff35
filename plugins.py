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
summary, the picture and --compare.

A plugin may also add **LIV classes**: a new row of the option pool (liv.register_class), one of the four
families with a featurizer genome of its own, which takes the next class id (18, 19, ...) wherever the
plugin is imported, in the order it registers them:

    import liv, plugins

    rec = liv.REGISTRY[5].featurizer                 # Rec-1: state size 16
    plugins.register_liv_class("Rec-64", "Rec", {**rec, "C": rec["C"]._replace(expansion="64/d"),
                                                 "B": rec["B"]._replace(expansion="64/d")}, conv_kernel=4)

The search then samples and mutates over 1..18 (or `--allow-classes 9,18`); the genome's rules (D9, D10),
the counts, the cache formula, decoding and every tool take it as they take the 17.
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


def register_liv_class(name: str, family: str, featurizer: dict, **options) -> int:
    """Add an LIV class to the option pool (liv.register_class; options: shorthand, operator, differential,
    long_conv, conv_kernel) and return its class id."""
    import liv

    return liv.register_class(name, family, featurizer, **options)


def load(modules) -> None:
    """Import the plugin modules (the current folder is searched too); ImportError when one is missing."""
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        importlib.import_module(name)


def compute(g, model, result) -> dict:
    """Every registered metric of a trained candidate."""
    return {name: float(m.fn(g, model, result)) for name, m in METRICS.items()}
