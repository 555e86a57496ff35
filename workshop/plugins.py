"""Plugins: modules named with --plugin that register metrics of their own (DESIGN.md D37).

A plugin is an importable module (on PYTHONPATH or in the current folder). It is recorded in
config.json and imported wherever a run is made or read: in the main process (RunConfig imports its
plugins when it is made, so --resume and --compare do too), and in every worker process and Ray task
(parallel.py) before a candidate is evaluated. Importing it registers its metrics:

    from workshop import plugins

    def embedding_share(genome, model, result):      # the genome, the built model, train.TrainResult
        n = sum(p.numel() for p in model.parameters())
        return model.embed.weight.numel() / n

    plugins.register_metric("embedding_share", embedding_share, label="share of parameters in the embedding")

A registered metric is computed for every candidate that trained (candidate.evaluate_genome), written
into its archive record, and accepted wherever a metric is: in a comma list of --objective, in the
summary, the picture and --compare.

A plugin may also add **LIV classes**: a new row of the option pool (`register_class` below), one of the four
families with a featurizer genome of its own, which takes the next class id (18, 19, ...) wherever the
plugin is imported, in the order it registers them:

    import liv
    from workshop import plugins

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

import liv
from liv import FG, LIVClass, fixed_width


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
    """Add an LIV class to the option pool (`register_class`; options: shorthand, operator, differential,
    long_conv, conv_kernel) and return its class id."""
    return register_class(name, family, featurizer, **options)


def load(modules) -> None:
    """Import the plugin modules (the current folder is searched too); ImportError when one is missing."""
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        importlib.import_module(name)


def compute(g, model, result) -> dict:
    """Every registered metric of a trained candidate."""
    return {name: float(m.fn(g, model, result)) for name, m in METRICS.items()}


FAMILY_GROUPS = {"SA": ("C", "B", "V"), "Rec": ("C", "B", "V", "S"), "GConv": ("C", "B", "V", "S"), "Memless": ("B", "V")}


def register_class(name: str, family: str, featurizer: dict, *, shorthand: str | None = None, operator: str | None = None,
                   differential: bool = False, long_conv: bool = False, conv_kernel: int = 0) -> int:
    """Add a class to the option pool (a plugin's, D37) with the next id, and return the id.

    A new class is a new row of the same table: one of the four families (its LIV code, cache and
    counts) with a featurizer genome of its own, `featurizer` = {group: FG} over the family's groups
    (SA: C, B, V; Rec and GConv: C, B, V, S; Memless: B, V); e.g. a recurrence with state 64 is Rec-1's
    featurizer with C and B "64/d". Registering the same class again returns its id; another class
    under a taken name is refused. The genome's class entry then ranges over 1..n_classes()."""
    if family not in FAMILY_GROUPS:
        raise ValueError(f"register_class {name!r}: family must be one of {', '.join(FAMILY_GROUPS)}, got {family!r}")
    feat = {g: fg if isinstance(fg, FG) else FG(*fg) for g, fg in featurizer.items()}
    if tuple(sorted(feat)) != tuple(sorted(FAMILY_GROUPS[family])):
        raise ValueError(f"register_class {name!r}: a {family} featurizer has the groups "
                         f"{', '.join(FAMILY_GROUPS[family])}, got {', '.join(feat) or 'none'}")
    if family == "Rec":
        fixed_width(feat["C"].expansion)  # the state size N: "k/d"
    template = min((c for c in liv.REGISTRY.values() if c.family == family and c.long_conv == long_conv), key=lambda c: c.id,
                   default=None)
    if template is None:
        raise ValueError(f"register_class {name!r}: long_conv is a GConv option")
    op = operator or template.operator
    if not (len(op) == 5 and op.isdigit()):
        raise ValueError(f"register_class {name!r}: operator must be 5 digits, got {op!r}")
    spec = dict(name=name, shorthand=shorthand or name[:3], operator=op, family=family, differential=bool(differential),
                featurizer=feat, long_conv=long_conv, conv_kernel=conv_kernel)
    for c in liv.REGISTRY.values():
        if c.name == name:
            same = {k: getattr(c, k) for k in spec} == spec
            if not same:
                raise ValueError(f"register_class: LIV class {name!r} exists already (class {c.id}) and differs")
            return c.id
    cid = max(liv.REGISTRY) + 1
    liv.REGISTRY[cid] = LIVClass(id=cid, base=cid, **spec)
    return cid
