"""Multi-fidelity NSGA-II: successive halving inside each generation (DESIGN.md D38).

The paper trains every candidate the same short budget, and selects at that fidelity. Here a
generation's children are instead trained at a ladder of budgets, the *rungs* (``--rungs 25,100``:
25 steps, then 100): all of them at the lowest rung, then the best 1/η of them at the next, and so on
up to the top rung, which is the run's ``--steps`` (the budget the baselines are trained at). This is
successive halving (Jamieson & Talwalkar, 2016) made multi-objective as Archai's and Syne Tune's
MO-ASHA do it:

1. **Promotion by non-dominated rank, then crowding distance** (``promote``), exactly NSGA-II's own
   order (evolve.rank_and_crowding, constraints included): never a weighted sum of the objectives.
   Of n candidates at a rung, ceil(n / η) go up; a failed one never does.
2. **A promoted candidate is trained again from scratch** at the higher budget, under the same seed:
   the cosine schedule of train.py is not a prefix of a longer one, and a score at the top rung is
   then exactly the score a single-fidelity run at that budget would give (comparable with the
   baselines). The price: the lower rungs' steps are spent again (measured in D38).
3. **Rung-aware survival** (``rung_violation``): a candidate that stopped below the top rung was scored
   by a cheaper, noisier proxy, so in (μ+λ) survival and the parents' tournament it ranks behind every
   top-rung candidate, as a constraint violation of "rungs short of the top". Deb's constrained
   domination already orders feasible before infeasible; within it the order is: within budgets
   first, then the higher rung, then the smaller budget overshoot.
4. **Every rung's score and every promotion is written down** (a ``Book``) the moment it is known, so
   a resumed run takes the decisions it had already made instead of making them again from a part of
   the batch, and loses no training (runlog.RungLog writes the book to ``rungs.jsonl``).

``MultiFidelity`` is an ``evaluation.Evaluator``: it wraps the run's evaluator (which trains a list of
individuals at ``steps``), so the loop of evolve.py is unchanged and a run without rungs is the paper's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

import evolve
from workshop import evaluation


@dataclass(frozen=True)
class Rungs:
    """The training budgets, lowest first (the last is the run's steps), and η (≥ 2)."""
    steps: tuple[int, ...]
    eta: int = 4

    def __post_init__(self):
        s = tuple(self.steps)
        if len(s) < 2 or any(type(x) is not int or x < 1 for x in s) or list(s) != sorted(set(s)):
            raise ValueError(f"rungs must be at least two increasing step counts >= 1, got {self.steps!r}")
        if type(self.eta) is not int or self.eta < 2:
            raise ValueError(f"eta must be an integer >= 2, got {self.eta!r}")

    @property
    def top(self) -> int:
        return len(self.steps) - 1

    def n_promoted(self, n: int) -> int:
        """Of n candidates at a rung, how many go up: ceil(n / η)."""
        return math.ceil(n / self.eta)


def promote(F: np.ndarray, n: int, cv=None) -> list[int]:
    """The ``n`` best rows of F by (constrained) non-dominated rank, then crowding distance (larger
    first), then row order; rows with a non-finite objective are never promoted. Ascending indices."""
    F = np.asarray(F, dtype=float).reshape(len(F), -1)
    if len(F) == 0 or n <= 0:
        return []
    rank, crowd = evolve.rank_and_crowding(F, cv)
    finite = [i for i in range(len(F)) if np.isfinite(F[i]).all()]
    return sorted(sorted(finite, key=lambda i: (rank[i], -crowd[i], i))[:n])


def rung_violation(rung_of: Callable[[str], int], top: int,
                   budget: Optional[Callable[[str], float]] = None) -> Callable[[str], float]:
    """The constraint violation of a key for survival (point 3 above): 0 for a top-rung candidate within
    budgets; the rungs it is short of the top otherwise; a budget overshoot v > 0 adds top + 1 and
    v / (1 + v) < 1, so that within budgets ranks first, then the higher rung, then the smaller v."""
    def violation(key: str) -> float:
        short = top - rung_of(key)
        v = 0.0 if budget is None else budget(key)
        over = 0.0 if v <= 0 else top + 1 + (1.0 if math.isinf(v) else v / (1.0 + v))
        return float(short + over)
    return violation


@dataclass
class Book:
    """What a multi-fidelity search has measured and decided: per (generation, key, steps) the
    evaluation, per (generation, rung) the keys promoted. In memory; runlog.RungLog writes it down."""
    results: dict = field(default_factory=dict)     # (g, key, steps) -> Evaluation
    decisions: dict = field(default_factory=dict)   # (g, rung) -> frozenset of keys promoted
    reached: dict = field(default_factory=dict)     # key -> highest rung it was trained at

    def result(self, g: int, key: str, steps: int) -> Optional[evaluation.Evaluation]:
        return self.results.get((g, key, steps))

    def add_result(self, g: int, key: str, rung: int, steps: int, ev: evaluation.Evaluation) -> None:
        self.results[(g, key, steps)] = ev
        self.reached[key] = max(rung, self.reached.get(key, -1))

    def decision(self, g: int, rung: int) -> Optional[frozenset]:
        return self.decisions.get((g, rung))

    def add_decision(self, g: int, rung: int, keys: Sequence[str]) -> None:
        self.decisions[(g, rung)] = frozenset(keys)


# evaluate(individuals, generation, report, steps=...): the run's evaluator, trained at `steps`
StepsEvaluator = Callable[..., None]


class MultiFidelity:
    """An ``evaluation.Evaluator`` that evaluates a generation's batch by successive halving over ``rungs``.

    ``evaluate(individuals, generation, report, steps=s)`` trains at s steps; ``key(individual)`` is the
    canonical key; ``at_top`` holds keys already scored at the top rung (the seeded baselines: trained
    there only, never halved); ``budget(key)`` the budget violation (None: no budgets). Each individual
    is reported once, when it stops: with its objectives at the highest rung it reached, and in its
    info ``rung`` (0 = lowest), ``rung_steps`` and ``rungs`` (every rung's steps, objectives, perplexity
    and seconds). ``log`` gets one line per rung and generation."""

    def __init__(self, evaluate: StepsEvaluator, rungs: Rungs, key: Callable[[Any], str], *,
                 book: Optional[Book] = None, at_top: Sequence[str] = (),
                 budget: Optional[Callable[[str], float]] = None, log: Callable[[str], None] = lambda line: None):
        self.evaluate, self.rungs, self.key, self.log = evaluate, rungs, key, log
        self.book = book if book is not None else Book()
        self.at_top, self.budget = set(at_top), budget

    def rung_of(self, key: str) -> int:
        return self.rungs.top if key in self.at_top else self.book.reached.get(key, self.rungs.top)

    def violation(self) -> Callable[[str], float]:
        return rung_violation(self.rung_of, self.rungs.top, self.budget)

    def __call__(self, individuals: list, generation: int, report: evaluation.Report) -> None:
        keys = [self.key(x) for x in individuals]
        top = [i for i, k in enumerate(keys) if k in self.at_top]
        if top:  # the seeded baselines: their top-rung records stand as they are
            self._train(individuals, keys, top, generation, self.rungs.top)
            for i in top:
                report(i, self._final(generation, keys[i], self.rungs.top))
        alive = [i for i, k in enumerate(keys) if k not in self.at_top]
        for r, steps in enumerate(self.rungs.steps):
            if not alive:
                return
            self._train(individuals, keys, alive, generation, r)
            if r == self.rungs.top:
                for i in alive:
                    report(i, self._final(generation, keys[i], r))
                return
            chosen = self.book.decision(generation, r)
            if chosen is None:  # first time: decide over the whole batch at this rung, and write it down
                F = np.array([self.book.result(generation, keys[i], steps).objectives for i in alive], dtype=float)
                cv = None if self.budget is None else np.array([self.budget(keys[i]) for i in alive])
                chosen = frozenset(keys[alive[j]] for j in promote(F, self.rungs.n_promoted(len(alive)), cv))
                self.book.add_decision(generation, r, sorted(chosen))
            up = sum(keys[i] in chosen for i in alive)
            self.log(f"gen {generation}: rung {r} ({steps} steps): {len(alive)} trained, {up} promoted "
                     f"to {self.rungs.steps[r + 1]} steps")
            for i in alive:
                if keys[i] not in chosen:
                    report(i, self._final(generation, keys[i], r))
            alive = [i for i in alive if keys[i] in chosen]

    def _train(self, individuals, keys, idx, g: int, rung: int) -> None:
        """Train the individuals `idx` at the rung (those the book does not hold yet), each written down
        the moment its result arrives."""
        steps = self.rungs.steps[rung]
        todo = [i for i in idx if self.book.result(g, keys[i], steps) is None]
        if not todo:
            return

        def got(j: int, ev: evaluation.Evaluation) -> None:
            self.book.add_result(g, keys[todo[j]], rung, steps, ev)
        self.evaluate([individuals[i] for i in todo], g, got, steps=steps)
        missing = [keys[i] for i in todo if self.book.result(g, keys[i], steps) is None]
        if missing:
            raise RuntimeError(f"evaluate returned without reporting {len(missing)} individuals at {steps} steps")

    def _final(self, g: int, key: str, rung: int) -> evaluation.Evaluation:
        """The evaluation an individual stopped at `rung` is archived with: that rung's, plus its ladder."""
        ladder = []
        for r, steps in enumerate(self.rungs.steps[: rung + 1]):
            ev = self.book.results.get((g, key, steps))
            if ev is not None:
                ladder.append(dict(rung=r, steps=steps, objectives=list(evolve.clean_objectives(ev.objectives)),
                                   perplexity=ev.info.get("perplexity"), seconds=ev.info.get("seconds")))
        ev = self.book.results[(g, key, self.rungs.steps[rung])]
        info = dict(ev.info, rung=rung, rung_steps=self.rungs.steps[rung], rungs=ladder)
        return evaluation.Evaluation(objectives=tuple(ev.objectives), info=info)


def eligible(records: list[dict], budget=None) -> list[dict]:
    """The records a selection may pick: scored at the top rung, within `budget(record)` when given (D35)."""
    return [r for r in top_rung(records) if budget is None or budget(r)]


def top_rung(records: list[dict]) -> list[dict]:
    """The records scored at the highest rung the run measured (D38): all of them in a single-fidelity
    run, whose records have no rung. A lower rung's perplexity is not comparable with the top's."""
    high = max((r.get("rung_steps", 0) for r in records), default=0)
    return [r for r in records if r.get("rung_steps", high) == high]
