"""What the workshop adds to evolve.py's NSGA-II: the hypervolume indicator that measures a run's
progress, and the evaluator protocol of a user's (or a worker pool's) batch evaluation.

**Hypervolume** measures a front with one number: the volume it dominates up to a reference point,
fixed at the start of a run (D16) so that it is comparable across generations: the search's progress
curve. Exact, by slicing: in 1-D a length, in 2-D a sweep over the staircase, in d-D a sum over slabs
along the last objective of (d−1)-D hypervolumes (O(n^(d−1)): slow beyond about 4 objectives).

**Evaluators.** ``evaluate(individuals, generation, report)`` calls ``report(i, Evaluation)`` once for every
index, as soon as that individual's evaluation is known (any order), so that the run's archive takes it
at once (runlog.ArchivedEvaluate); ``sequential(fn)`` adapts a one-at-a-time ``fn``, and ``in_memory`` turns
an evaluator into the evolve.Scorer that nsga2 takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from evolve import Child, Scorer, _as_matrix, clean_objectives, non_dominated_sort


def hypervolume(F: np.ndarray, ref: Sequence[float]) -> float:
    """Exact volume dominated by the rows of F and bounded by ``ref`` (minimisation).

    Rows that are non-finite or do not strictly dominate ``ref`` contribute nothing.
    """
    ref = np.asarray(ref, dtype=float).ravel()
    if not np.isfinite(ref).all():
        raise ValueError(f"reference point must be finite, got {ref.tolist()}")
    F = np.asarray(F, dtype=float)
    if F.size == 0:
        return 0.0
    F = _as_matrix(F)
    if F.shape[1] != ref.size:
        raise ValueError(f"{F.shape[1]} objectives but a {ref.size}-D reference point")
    P = F[np.isfinite(F).all(axis=1) & (F < ref).all(axis=1)]
    if len(P) > 1:
        P = P[non_dominated_sort(P)[0]]  # dominated points add no volume; fewer slices
    return float(_hv(P, ref))


def _hv(P: np.ndarray, ref: np.ndarray) -> float:
    if len(P) == 0:
        return 0.0
    if P.shape[1] == 1:
        return float(ref[0] - P[:, 0].min())
    if P.shape[1] == 2:  # sweep by the first objective; each new best second objective adds a strip
        P = P[np.lexsort((P[:, 1], P[:, 0]))]
        area, best = 0.0, ref[1]
        for x, y in P:
            if y < best:
                area += (ref[0] - x) * (best - y)
                best = y
        return area
    # d >= 3: slabs along the last objective; in the slab [z_i, z_{i+1}) the points with z <= z_i
    # dominate a (d-1)-D cross-section that does not change inside the slab.
    P = P[np.argsort(P[:, -1], kind="stable")]
    z = np.append(P[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(P)):
        if z[i + 1] > z[i]:
            volume += _hv(P[: i + 1, :-1], ref[:-1]) * (z[i + 1] - z[i])
    return volume


def finite_front(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows among the finite ones (empty when there are none)."""
    fronts = non_dominated_sort(F) if len(F) else []
    return fronts[0] if fronts and np.isfinite(F[fronts[0]]).all() else np.zeros(0, dtype=int)


def default_ref_point(F: np.ndarray) -> tuple[float, ...]:
    """Reference point from a set of objective vectors: the worst finite value per objective plus
    10% of that objective's range (10% of its magnitude when the range is 0, 1.0 when both are 0),
    so that the worst points still add volume."""
    F = _as_matrix(F)
    F = F[np.isfinite(F).all(axis=1)]
    if len(F) == 0:
        raise ValueError("no finite objective vector to fix the reference point from; pass ref_point")
    worst, best = F.max(axis=0), F.min(axis=0)
    pad = np.where(worst > best, 0.1 * (worst - best), np.where(worst != 0, 0.1 * np.abs(worst), 1.0))
    return tuple(float(x) for x in worst + pad)


@dataclass
class Evaluation:
    """The outcome of evaluating one individual. ``objectives`` are minimised; a failed candidate has
    inf (any non-finite value is stored as inf). ``info`` is anything JSON-serialisable (params, cache,
    perplexity, seconds, status, error, ...) and is merged into the individual's archive record."""
    objectives: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)


Report = Callable[[int, Evaluation], None]


# evaluate(individuals, generation, report): must call report(i, evaluation) once for every index i,
# as soon as that individual's evaluation is known (any order), so a caller can archive it right away.
Evaluator = Callable[[list, int, Report], None]


def sequential(fn: Callable[[Any, int], Evaluation]) -> Evaluator:
    """Turn ``fn(individual, generation) -> Evaluation`` into a batch evaluator that reports each
    result the moment it is ready."""
    def evaluate(individuals: list, generation: int, report: Report) -> None:
        for i, ind in enumerate(individuals):
            report(i, fn(ind, generation))
    return evaluate


def in_memory(evaluator: Evaluator) -> Scorer:
    """An ``Evaluator`` (the user's, one report per individual) as a ``Scorer``: collect the
    reports into an objectives matrix. A NaN or -inf objective counts as failed: inf."""
    def run(children: list[Child], g: int) -> np.ndarray:
        out: list[Optional[list[float]]] = [None] * len(children)

        def report(i: int, ev: Evaluation) -> None:
            out[i] = clean_objectives(ev.objectives)
        evaluator([c.individual for c in children], g, report)
        if any(o is None for o in out):
            raise RuntimeError("evaluate returned without reporting every individual")
        return np.array(out, dtype=float).reshape(len(children), len(out[0]) if out else 0)
    return run
