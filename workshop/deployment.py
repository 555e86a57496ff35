"""Measured costs and budgets in a run (workshop tier; DESIGN.md D34-D36).

`Costs.open(config, folder, cfg)` is star.synthesize's one handle on them; with a default
configuration (nothing measured, no budget) every method hands back what it was given, so the run is
the one it always was.

- **Measuring** (D34). Every candidate and baseline whose configuration asks for measured metrics
  (`--measure`, a measured objective, `--max-latency`, `--max-memory`) is measured by meter.py at the
  run's deployment shape, in the main process, one genome at a time, before the batch it belongs to
  is trained (worker processes wait idle meanwhile), once per canonical genome. Each measurement is
  appended to `measurements.jsonl` (fsync'ed, like the archive) before it is used, so a resumed run
  reads it back and never measures again. A *window* is one batch measured together: it starts with
  Transformer++ of the run's depth at the same shape, and every metric is also recorded as a ratio to
  it (`*_ratio`). The metrics are merged into the candidate's archive record and its objectives
  computed again from them.
- **Budgets** (D35). `--max-params` and `--max-cache` are known from the genome: the search's
  variation gets a `feasible` predicate, so that no genome over them is sampled, bred, repaired or
  seeded (the baselines are still trained as reference points). `--max-latency` and `--max-memory` are
  only known once measured: their violation (config.RunConfig.violation) drives NSGA-II's constrained
  domination (evolve.constrained_sort: feasible first, then the smaller violation).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Optional

import evolve
import genome
import liv
from workshop import candidate, evaluation, meter, runlog, words
from workshop.config import FORMULA_BUDGETS, RunConfig


class Measurements:
    """measurements.jsonl (None: in memory): one record per canonical genome, appended before it is used."""

    def __init__(self, config: RunConfig, path: Optional[Path], shape: meter.Shape, log: Callable[[str], None] = print):
        self.config, self.path, self.shape, self.log = config, path, shape, log
        self.measure = meter.METERS[config.meter]
        self.done = {r["key"]: r for r in runlog.read_records(path)}

    def ensure(self, genomes) -> None:
        """Measure, in this process and one at a time, every genome not measured yet: one window."""
        todo = {}
        for g in genomes:
            todo.setdefault(genome.canonical_str(g), g)
        todo = {k: g for k, g in todo.items() if k not in self.done}
        if not todo:
            return
        tpp = genome.transformer_pp(self.config.depth)
        reference = self.measure(tpp, self.shape)  # the window's reference, at the same shape
        for key, g in todo.items():
            t0 = time.perf_counter()
            try:
                rec = reference if key == genome.canonical_str(tpp) else self.measure(g, self.shape)
            except Exception as e:  # e.g. out of memory at the deployment shape: its measured metrics are inf
                rec = dict(metrics={}, error=f"{type(e).__name__}: {e}")
            rec = dict(key=key, genome=str(g), **rec, reference=reference["metrics"],
                       seconds=round(time.perf_counter() - t0, 3), load_average=round(os.getloadavg()[0], 2))
            rec["metrics"] = {**rec["metrics"], **meter.reference_ratios(rec["metrics"], reference["metrics"])}
            self.done[key] = runlog.append_record(self.path, rec)
            m = rec["metrics"]
            if "error" in rec:
                self.log(f"measured {key}: failed ({rec['error'][:120]})")
                continue
            self.log(f"measured {key}: first token {m['ttft_ms']:.1f} ms, decode {m['decode_ms']:.2f} ms "
                     f"(p95 {m['decode_p95_ms']:.2f}), memory {words.fmt_bytes(m['memory_bytes'])} at T = "
                     f"{max(self.shape.contexts)}; decode {m.get('decode_ratio', float('nan')):.2f}x Transformer++, "
                     f"{rec['seconds']:.1f}s")

    def metrics(self, g) -> dict:
        self.ensure([g])
        return dict(self.done[genome.canonical_str(g)]["metrics"])


class Costs:
    """What measured costs and budgets add to a synthesis (inert when the configuration asks for neither)."""

    def __init__(self, config: RunConfig, book: Optional[Measurements], cfg: liv.ModelConfig):
        self.config, self.book, self.cfg = config, book, cfg

    @classmethod
    def open(cls, config: RunConfig, folder, cfg: liv.ModelConfig, device: str = "cpu", log=print) -> "Costs":
        book = None
        if config.measures:
            path = None if folder.path is None else Path(folder.path) / "measurements.jsonl"
            book = Measurements(config, path, config.deploy_shape(cfg.vocab_size, device), log)
        return cls(config, book, cfg)

    def _merge(self, g, info: dict) -> tuple[dict, tuple]:
        info = {**info, **self.book.metrics(g)}
        return info, candidate.objectives_of(info, self.config.objective)

    def trained(self, train_one: Callable) -> Callable:
        """`train_one(g, steps, seed) -> (info, objectives)` with g measured before it trains."""
        if self.book is None:
            return train_one

        def run(g, steps=None, seed=None, **kw):
            self.book.ensure([g])
            return self._merge(g, train_one(g, steps=steps, seed=seed, **kw)[0])
        return run

    def evaluator(self, evaluate: evaluation.Evaluator) -> evaluation.Evaluator:
        """A batch evaluator that measures the batch first (its workers idle) and merges the measurements."""
        if self.book is None:
            return evaluate

        def run(individuals: list, generation: int, report: evaluation.Report, **steps) -> None:
            if hasattr(evaluate, "wait_ready"):  # workers that are still starting must not run beside the meter
                evaluate.wait_ready()
            self.book.ensure(individuals)

            def merged(i: int, ev: evaluation.Evaluation) -> None:
                info, objectives = self._merge(individuals[i], ev.info)
                report(i, evaluation.Evaluation(objectives=objectives, info=info))
            evaluate(individuals, generation, merged, **steps)  # steps=: a rung of a multi-fidelity search (D38)
        return run

    def variation(self, var: evolve.Variation) -> evolve.Variation:
        """The search's variation with the budgets: formula ones as `feasible`, measured ones as `violation`."""
        c = self.config
        changes = {}
        if any(getattr(c, opt) is not None for opt in FORMULA_BUDGETS):
            changes["feasible"] = lambda g: c.violation(candidate.describe_costs(g, self.cfg, c.cache_len),
                                                        FORMULA_BUDGETS) == 0.0
        if self.book is not None and (c.max_latency is not None or c.max_memory is not None):
            changes["violation"] = lambda key: c.violation(self.book.done[key]["metrics"], ("max_latency", "max_memory")) \
                if key in self.book.done else 0.0
        return dataclasses.replace(var, **changes) if changes else var
