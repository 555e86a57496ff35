"""NSGA-II and the search loop: how STAR refines a population of genomes (D16).

STAR trades quality against efficiency, so there is no single best genome but a *Pareto front*. All
objectives here are **minimised**. Point a *dominates* point b when a is no worse in every objective
and strictly better in at least one. NSGA-II (Deb et al., 2002) keeps a population that approaches
the front and spreads along it, with four pieces:

1. **Fast non-dominated sort.** Count, for every point, how many points dominate it. The points with
   count 0 form front 1 (rank 0). Remove them, decrement the counts of the points they dominated, and
   the new zeros form front 2; repeat. O(m·n²) for n points and m objectives.
2. **Crowding distance** (within one front). For each objective, sort the front; every point gets
   the gap between its two neighbours, divided by the objective's range; the extremes get infinity so
   the ends of the front are always kept. An objective that is constant on the front has no range and
   contributes 0. Large crowding = an isolated point = worth keeping for diversity.
3. **(μ+λ) survival.** Parents and offspring compete together (elitism: a good parent is never lost
   to a bad child). Survivors are taken front by front; the first front that does not fit whole is
   cut by crowding distance, largest first, with ties broken by the seeded generator.
4. **Binary tournament** for parents: draw two members; the lower rank wins, then the larger
   crowding distance, then a coin flip.

**Hypervolume** measures a whole front with one number: the volume of objective space that the front
dominates, bounded by a reference point. It grows exactly when the front improves, so it is the
search's progress curve; the reference point is fixed at the start of a run (D16) so that numbers are
comparable across generations. Computed exactly by slicing: in 1-D it is a length, in 2-D a sweep
over the staircase, in d-D a sum over slabs along the last objective of (d−1)-D hypervolumes.

A candidate whose training failed (diverged, out of memory, raised) has infinite objectives (D16).
Rows with NaN or inf rank in a last front of their own and never enter the crowding arithmetic.

The loop is generic: individuals are opaque and handled through callables (sample, crossover,
mutate, repair, a canonical ``key``) and serialised with ``encode`` / ``decode`` (for STAR genomes:
``str(g)`` and ``Genome.parse``). **``generation_step``** is one whole generation in a screenful:
generation 0 is the initial population (given individuals, e.g. the D15 baselines, then samples);
every later generation breeds ``n_offspring`` children (tournament → crossover or copy → mutate →
repair), regenerating any child whose key was already evaluated (bounded retries), evaluates them in
one batch, and applies (μ+λ) survival. **``nsga2_minimal``** runs it generation after generation in
memory. ``algorithm="random"`` replaces the bred children by fresh samples: the built-in control that
shows whether the search does better than chance at the same number of evaluations.

**Reproducible and resumable.** All randomness of generation g comes from
``np.random.default_rng([seed, g])``, so a generation can be replayed from the previous population
alone. ``nsga2`` is the same loop with its bookkeeping, each in a piece of its own below: the
*archive* (every evaluation appended to ``archive.jsonl`` and fsync'ed the moment it is reported),
*snapshots* (each generation ends with the survivors and statistics written atomically), *resume*
(``load_checkpoint`` checks the whole folder before anything is written, then the interrupted
generation is replayed, taking finished evaluations from the archive), *statistics* and *progress*
(the lines a user reads, with ETAs). A killed run loses no finished evaluation and repeats none, and
ends with the same archive as an uninterrupted run; a test aborts it at every write to check this.

What this does not do: constraints, parallel evaluation (the batch ``evaluate`` lets a parallel
evaluator be dropped in), locking a run folder against a second process, fast hypervolume beyond ~4 objectives (the slicing is exact but O(n^(d−1))).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------
# NSGA-II primitives (D16). F is an (n points, m objectives) array; every objective is minimised.
# ----------------------------------------------------------------------------------------------------


def _as_matrix(F) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"objectives must be a 2-D array (points, objectives), got shape {F.shape}")
    return F


def dominates(F: np.ndarray) -> np.ndarray:
    """D[i, j] is True when point i dominates point j: no worse everywhere, better somewhere."""
    F = _as_matrix(F)
    no_worse = (F[:, None, :] <= F[None, :, :]).all(axis=-1)
    better = (F[:, None, :] < F[None, :, :]).any(axis=-1)
    return no_worse & better  # (n, n)


def non_dominated_sort(F: np.ndarray) -> list[np.ndarray]:
    """Fronts as ascending index arrays, best first. Rows with NaN/inf form a last front of their own."""
    F = _as_matrix(F)
    finite = np.isfinite(F).all(axis=1)
    idx = np.flatnonzero(finite)
    dom = dominates(F[idx])
    n_dominators = dom.sum(axis=0)  # how many points dominate each point
    done = np.zeros(len(idx), dtype=bool)
    fronts = []
    current = np.flatnonzero(n_dominators == 0)
    while current.size:
        fronts.append(idx[current])
        done[current] = True
        n_dominators = n_dominators - dom[current].sum(axis=0)  # peel the front off
        current = np.flatnonzero((n_dominators == 0) & ~done)
    failed = np.flatnonzero(~finite)
    if failed.size:  # NaN compares False with everything, so it must never meet the dominance test
        fronts.append(failed)
    return fronts


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """Crowding distance of each row of one front: extremes inf, a constant objective adds 0.

    Every point tied at an objective's minimum or maximum counts as an extreme (so the result does not
    depend on the order of the rows). Non-finite rows get 0 and are left out of the arithmetic.
    """
    F = _as_matrix(F)
    distance = np.zeros(len(F))
    ok = np.flatnonzero(np.isfinite(F).all(axis=1))
    G = F[ok]
    d = np.zeros(len(ok))
    for j in range(F.shape[1]):
        v = G[:, j]
        if len(v) == 0 or v.max() == v.min():
            continue  # constant objective: no range, contributes 0
        lo, hi = v.min(), v.max()
        order = np.argsort(v, kind="stable")
        s = v[order]
        d[order[1:-1]] += (s[2:] - s[:-2]) / (hi - lo)  # gap between the two neighbours
        d[(v == lo) | (v == hi)] = np.inf
    distance[ok] = d
    return distance


def rank_and_crowding(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its front index (0 = non-dominated) and its crowding distance within that front."""
    F = _as_matrix(F)
    rank = np.zeros(len(F), dtype=int)
    crowd = np.zeros(len(F))
    for r, front in enumerate(non_dominated_sort(F)):
        rank[front] = r
        crowd[front] = crowding_distance(F[front])
    return rank, crowd


def select_survivors(F: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(μ+λ) survival: whole fronts first; the front that does not fit is cut by crowding distance
    (largest first), ties broken at random by ``rng``. Returns the kept row indices, ascending."""
    F = _as_matrix(F)
    keep: list[int] = []
    for front in non_dominated_sort(F):
        room = n - len(keep)
        if room <= 0:
            break
        if len(front) <= room:
            keep.extend(front.tolist())
            continue
        crowd = crowding_distance(F[front])
        order = np.lexsort((rng.random(len(front)), -crowd))  # primary: -crowd; then the coin
        keep.extend(front[order[:room]].tolist())
    return np.sort(np.asarray(keep, dtype=int))


def tournament(ranks: np.ndarray, crowd: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` binary tournaments between two distinct members: lower rank, then larger crowding, then
    a coin flip. Returns the winners' indices."""
    ranks, crowd = np.asarray(ranks), np.asarray(crowd, dtype=float)
    N = len(ranks)
    if N == 0:
        raise ValueError("tournament on an empty population")
    a = rng.integers(0, N, size=n)
    b = (a + rng.integers(1, N, size=n)) % N if N > 1 else a.copy()  # b != a when possible
    coin = rng.random(n) < 0.5
    a_wins = np.where(ranks[a] != ranks[b], ranks[a] < ranks[b],
                      np.where(crowd[a] != crowd[b], crowd[a] > crowd[b], coin))
    return np.where(a_wins, a, b)


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


def _finite_front(F: np.ndarray) -> np.ndarray:
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

# ----------------------------------------------------------------------------------------------------
# The search in memory: one generation of NSGA-II, and the loop around it (D16)
# ----------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """The outcome of evaluating one individual. ``objectives`` are minimised; a failed candidate has
    inf (any non-finite value is stored as inf). ``info`` is anything JSON-serialisable (params, cache,
    perplexity, seconds, status, error, ...) and is merged into the individual's archive record."""
    objectives: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)


Report = Callable[[int, Evaluation], None]
# evaluate(individuals, generation, report): must call report(i, evaluation) once for every index i,
# as soon as that individual's evaluation is known (any order), so the loop archives it right away.
Evaluator = Callable[[list, int, Report], None]


def sequential(fn: Callable[[Any, int], Evaluation]) -> Evaluator:
    """Turn ``fn(individual, generation) -> Evaluation`` into a batch evaluator that reports each
    result the moment it is ready."""
    def evaluate(individuals: list, generation: int, report: Report) -> None:
        for i, ind in enumerate(individuals):
            report(i, fn(ind, generation))
    return evaluate


ALGORITHMS = ("nsga2", "random")  # "random": the built-in control, fresh samples every generation


@dataclass(frozen=True)
class Variation:
    """The problem's callables (individuals are opaque to the loop) and the variation rates."""
    sample: Callable[[np.random.Generator], Any]
    crossover: Callable[[Any, Any, np.random.Generator], Any]
    mutate: Callable[[Any, np.random.Generator], Any]
    repair: Callable[[Any, np.random.Generator], tuple[Any, int]]
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]
    key: Callable[[Any], str]
    p_crossover: float = 0.9
    p_mutation: float = 1.0
    max_retries: int = 50


@dataclass
class Child:
    """A new individual of this generation, before evaluation."""
    individual: Any
    text: str            # encode(individual): its identity on disk
    key: str             # canonical key, for duplicate detection
    repairs: int         # entries that repair changed
    origin: str          # initial | sample | crossover | mutation
    parents: list[str]   # parents' keys


@dataclass
class Population:
    """The survivors: text form, key and objectives of each member."""
    texts: list[str]
    keys: list[str]
    F: np.ndarray        # (members, objectives), inf for failed candidates


@dataclass
class Generation:
    """What one generation produced."""
    population: Population   # the survivors
    children: list[Child]    # the new individuals, in evaluation order
    F: np.ndarray            # (children, objectives)
    duplicates: int          # children regenerated because their key was already evaluated
    notes: list[str]         # what the breeder had to give up on, for the log


# evaluate(children, generation) -> (children, objectives): how generation_step gets its numbers
Evaluate = Callable[[list[Child], int], np.ndarray]


def generation_step(population: Population, g: int, var: Variation, evaluate: Evaluate, seen: set[str],
                    *, seed: int, pop_size: int, n_offspring: int, algorithm: str = "nsga2",
                    initial: Sequence = ()) -> Generation:
    """One generation of NSGA-II in memory: breed, evaluate, (μ+λ) survival.

    Generation 0 is ``initial`` plus samples up to ``pop_size``. Later generations breed
    ``n_offspring`` children: binary tournament on (rank, crowding) → crossover or copy → mutate →
    repair, each child regenerated while its key is in ``seen`` (the keys of earlier generations) or
    already in this batch. With ``algorithm="random"`` the children are fresh samples instead, and
    everything else (evaluation, survival) is the same. All randomness comes from
    ``default_rng([seed, g])``, so this function is a pure function of its arguments and ``evaluate``.
    """
    rng = np.random.default_rng([seed, g])
    breed = _Breeder(var, rng, seen)
    if g == 0:
        children = breed.initial(initial)
        children += breed.samples(pop_size - len(children))
    elif algorithm == "random":
        children = breed.samples(n_offspring)
    else:
        rank, crowd = rank_and_crowding(population.F)
        children = breed.offspring(population, rank, crowd, n_offspring)
    F_new = evaluate(children, g)  # (children, objectives)
    texts = population.texts + [c.text for c in children]
    keys = population.keys + [c.key for c in children]
    F = np.vstack([population.F, F_new]) if population.keys else F_new
    keep = select_survivors(F, pop_size, rng)  # parents and children compete together
    survivors = Population([texts[i] for i in keep], [keys[i] for i in keep], F[keep])
    return Generation(survivors, children, F_new, breed.duplicates, breed.notes)


def nsga2_minimal(initial: Sequence, var: Variation, evaluate: Evaluator, *, seed: int = 0,
                  pop_size: int = 16, n_offspring: int = 16, generations: int = 18,
                  algorithm: str = "nsga2") -> list[Generation]:
    """The whole search in memory, one ``generation_step`` after another; returns every generation.

    ``nsga2`` below is this loop plus bookkeeping (archive, resume, progress, statistics); a test
    checks that it reaches the same populations through the same evaluations."""
    population = Population([], [], np.zeros((0, 0)))
    seen: set[str] = set()
    history = []
    for g in range(generations + 1):
        step = generation_step(population, g, var, _in_memory(evaluate), seen, seed=seed,
                               pop_size=pop_size, n_offspring=n_offspring, algorithm=algorithm,
                               initial=initial)
        seen.update(c.key for c in step.children)
        population = step.population
        history.append(step)
    return history


def _in_memory(evaluate: Evaluator) -> Evaluate:
    """An ``Evaluator`` as an ``Evaluate``: collect its reports into an objectives matrix."""
    def run(children: list[Child], g: int) -> np.ndarray:
        out: list[Optional[list[float]]] = [None] * len(children)

        def report(i: int, ev: Evaluation) -> None:
            out[i] = _clean_objectives(ev.objectives)
        evaluate([c.individual for c in children], g, report)
        if any(o is None for o in out):
            raise RuntimeError("evaluate returned without reporting every individual")
        return np.array(out, dtype=float).reshape(len(children), len(out[0]) if out else 0)
    return run


class _Breeder:
    """Makes one generation's children: variation and repair, a round trip through the text form (the
    individual a resumed run would see), and regeneration of a child whose key was already evaluated,
    up to ``max_retries`` times."""

    def __init__(self, var: Variation, rng: np.random.Generator, seen: set[str]):
        self.var, self.rng, self.seen = var, rng, seen
        self.batch: set[str] = set()  # keys of this generation's children so far
        self.duplicates = 0
        self.notes: list[str] = []

    def initial(self, individuals: Sequence) -> list[Child]:
        children = []
        for ind in individuals:  # e.g. the D15 baselines, evaluated first
            text = self.var.encode(ind)
            k = self.var.key(self.var.decode(text))
            if k in self.batch:
                self.notes.append(f"initial individual {_short(text)} duplicates an earlier one; skipped")
                self.duplicates += 1
                continue
            self.batch.add(k)
            children.append(Child(self.var.decode(text), text, k, 0, "initial", []))
        return children

    def samples(self, n: int) -> list[Child]:
        def make():
            ind, n_changed = self.var.repair(self.var.sample(self.rng), self.rng)
            return ind, n_changed, "sample", []
        return self._unique_children(n, make)

    def offspring(self, pop: Population, rank: np.ndarray, crowd: np.ndarray, n: int) -> list[Child]:
        var, rng = self.var, self.rng

        def make():
            a, b = tournament(rank, crowd, rng, 2)
            if rng.random() < var.p_crossover:
                child = var.crossover(var.decode(pop.texts[a]), var.decode(pop.texts[b]), rng)
                origin, parents = "crossover", [pop.keys[a], pop.keys[b]]
            else:
                child = var.decode(pop.texts[a])  # a fresh copy: parents are never aliased
                origin, parents = "mutation", [pop.keys[a]]
            if rng.random() < var.p_mutation:
                child = var.mutate(child, rng)
            child, n_changed = var.repair(child, rng)
            return child, n_changed, origin, parents
        return self._unique_children(n, make)

    def _unique_children(self, n: int, make: Callable[[], tuple[Any, int, str, list[str]]]) -> list[Child]:
        children = []
        for _ in range(max(n, 0)):
            for _ in range(self.var.max_retries + 1):
                ind, n_changed, origin, parents = make()
                text = self.var.encode(ind)
                ind = self.var.decode(text)
                k = self.var.key(ind)
                if k not in self.seen and k not in self.batch:
                    break
                self.duplicates += 1
            else:
                self.notes.append(f"no new individual after {self.var.max_retries} retries; "
                                  f"{len(children)} instead of {n}")
                break
            self.batch.add(k)
            children.append(Child(ind, text, k, int(n_changed), origin, parents))
        return children


# ----------------------------------------------------------------------------------------------------
# The full loop: the in-memory loop plus archive, resume, statistics and progress (DESIGN.md, a run's
# outputs)
# ----------------------------------------------------------------------------------------------------


class ResumeError(ValueError):
    """A run folder cannot be resumed as it is; the message (one line) names the file, the line or
    generation, and what to do."""


class SearchError(RuntimeError):
    """The search cannot go on (every candidate of generation 0 failed); one line, records kept."""


@dataclass
class SearchResult:
    """State of a search: the current population, the whole archive, per-generation stats."""
    population: list                 # decoded individuals
    objectives: np.ndarray           # (pop, m), inf for failed candidates
    records: list[dict]              # archive records, in archive order (as stored in archive.jsonl)
    stats: list[dict]                # one dict per generation (as in generations.jsonl)
    ref_point: tuple[float, ...]
    generation: int                  # the last completed generation

    def pareto_records(self) -> list[dict]:
        """Archive records on the non-dominated front of everything evaluated."""
        F = np.array([_objectives_from_json(r["objectives"]) for r in self.records], dtype=float)
        return [self.records[i] for i in _finite_front(F.reshape(len(self.records), -1))]


# fields the loop writes into every record; an Evaluation.info may not overwrite them
RESERVED = ("generation", "genome", "key", "objectives", "repairs", "origin", "parents")
# fields that legitimately differ between an uninterrupted and a resumed run
TIMING_FIELDS = ("wall_s", "evaluate_s", "bookkeeping_s")


def nsga2(*, initial: list, sample: Callable[[np.random.Generator], Any], evaluate: Evaluator,
          crossover: Callable[[Any, Any, np.random.Generator], Any],
          mutate: Callable[[Any, np.random.Generator], Any],
          repair: Callable[[Any, np.random.Generator], tuple[Any, int]],
          encode: Callable[[Any], str], decode: Callable[[str], Any], key: Callable[[Any], str],
          pop_size: int = 16, n_offspring: int = 16, generations: int = 18, p_crossover: float = 0.9,
          p_mutation: float = 1.0, seed: int = 0, run_dir: Optional[str | Path] = None,
          resume: bool = False, ref_point: Optional[Sequence[float]] = None, max_retries: int = 50,
          log: Callable[[str], None] = print,
          on_generation: Optional[Callable[[SearchResult], None]] = None,
          format_info: Optional[Callable[[dict], str]] = None, algorithm: str = "nsga2") -> SearchResult:
    """Run NSGA-II (D16): generation 0 evaluates ``initial`` plus ``sample``-d individuals up to
    ``pop_size``; generations 1..``generations`` each breed ``n_offspring`` new individuals.

    Callables: ``sample(rng)``; ``crossover(a, b, rng)`` (applied with probability ``p_crossover``,
    else the child is a copy of the first parent); ``mutate(ind, rng)`` (applied with probability
    ``p_mutation``; the per-entry rate is the callable's business); ``repair(ind, rng) -> (ind,
    n_changed)`` after every sample and child; ``key(ind)`` canonical, for duplicate detection;
    ``encode``/``decode`` the text form (an individual is always round-tripped through it, so a
    resumed run sees exactly what an uninterrupted one saw). The variation callables must be
    deterministic given ``rng`` and must not modify their arguments; ``evaluate`` must not draw from
    the loop's ``rng`` (seed training from the individual instead).

    ``algorithm="random"`` is the control: every generation after 0 evaluates ``n_offspring`` fresh
    samples instead of bred children; generation 0, evaluation, archive, survival and statistics are
    the same as NSGA-II's, so the two are compared at equal numbers of evaluations.

    ``evaluate(individuals, generation, report)`` is called once per generation with all new
    individuals and must call ``report(i, Evaluation)`` for each index as soon as that result is
    known; the loop archives it at once (``sequential(fn)`` adapts a one-at-a-time ``fn``). A failed
    candidate is *reported* with inf objectives and its error in ``info`` (D16); an exception out of
    ``evaluate`` stops the run, which ``resume`` then continues. A generation 0 in which every
    candidate fails raises ``SearchError``; a later one is reported and the population stays.

    ``run_dir`` (None: in memory) receives ``archive.jsonl`` (one record per evaluation: generation,
    genome = encode, key, objectives with null for inf, repairs, origin, parents' keys, then
    ``Evaluation.info``), ``population_{g:03d}.json`` (the survivors, the run's parameters and the
    statistics so far) and ``generations.jsonl`` (one statistics line per generation, a copy of the
    newest snapshot's). ``resume=True`` continues the run found there, or raises ``ResumeError``.
    ``ref_point`` defaults to ``default_ref_point`` of generation 0's objectives, fixed for the run.
    ``format_info(record) -> str``, if given, words the progress line of each evaluation (e.g. the
    measured perplexity, parameters and cache), instead of the bare status.
    """
    if pop_size < 1 or n_offspring < 0 or generations < 0 or max_retries < 0:
        raise ValueError("need pop_size >= 1, n_offspring >= 0, generations >= 0, max_retries >= 0")
    if not (0.0 <= p_crossover <= 1.0 and 0.0 <= p_mutation <= 1.0):
        raise ValueError("p_crossover and p_mutation are probabilities")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    var = Variation(sample, crossover, mutate, repair, encode, decode, key, p_crossover, p_mutation,
                    max_retries)
    params = {"seed": seed, "pop_size": pop_size, "n_offspring": n_offspring, "p_crossover": p_crossover,
              "p_mutation": p_mutation, "algorithm": algorithm}  # a resume must agree with these
    ref = None if ref_point is None else tuple(float(x) for x in ref_point)
    run_dir = None if run_dir is None else Path(run_dir)
    state = Checkpoint(records=[], population=Population([], [], np.zeros((0, 0))), stats=[], ref=ref,
                       start=0)
    if run_dir is not None:
        if resume:
            state = load_checkpoint(run_dir, params, ref, var)  # checks everything, writes nothing
        elif (run_dir / "archive.jsonl").exists() or list(run_dir.glob("population_*.json")):
            raise FileExistsError(f"{run_dir} already holds a search; pass resume=True "
                                  "or choose another directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        for path, text in state.repairs:
            _write_atomic(path, text)
        for note in state.notes:
            log(note)

    archive = Archive(None if run_dir is None else run_dir / "archive.jsonl", state.records,
                      n_obj=len(state.ref) if state.ref is not None else state.n_obj)
    progress = Progress(log, generations, n_offspring, format_info)
    evaluations = ArchivedEvaluate(archive, evaluate, progress)
    population, stats, ref, done = state.population, state.stats, state.ref, state.start - 1
    seen = {r["key"] for r in archive.records if r["generation"] < state.start}

    def result() -> SearchResult:
        return SearchResult(population=[decode(t) for t in population.texts], objectives=population.F.copy(),
                            records=archive.records, stats=stats, ref_point=ref, generation=done)

    try:
        for g in range(state.start, generations + 1):
            t_start = time.perf_counter()
            step = generation_step(population, g, var, evaluations, seen, seed=seed, pop_size=pop_size,
                                   n_offspring=n_offspring, algorithm=algorithm, initial=initial)
            for note in step.notes:
                log(f"gen {g}: {note}")
            if g == 0:
                _check_generation_zero(step, archive)
                ref = ref if ref is not None else default_ref_point(step.F)
            population, done = step.population, g
            seen.update(c.key for c in step.children)
            stat = generation_stats(g, step, archive, ref)
            wall = time.perf_counter() - t_start
            stat.update(wall_s=wall, evaluate_s=evaluations.evaluate_s,
                        bookkeeping_s=wall - evaluations.evaluate_s)
            stats.append(stat)
            if run_dir is not None:
                save_generation(run_dir, g, params, ref, population, stats)
            progress.generation(g, stat)
            if on_generation is not None:
                on_generation(result())
    finally:
        archive.close()
    return result()


def generation_stats(g: int, step: Generation, archive: "Archive", ref: tuple[float, ...]) -> dict:
    """The statistics line of one generation (generations.jsonl), timings left to the caller."""
    pop, children = step.population, step.children
    archive_F = np.array([_objectives_from_json(r["objectives"]) for r in archive.records], dtype=float)
    repaired = sum(c.repairs > 0 for c in children)
    return {"generation": g,
            "hypervolume": hypervolume(pop.F, ref),
            "hypervolume_archive": hypervolume(archive_F.reshape(-1, len(ref)), ref),
            "front_size": len(_finite_front(pop.F)),
            "population": len(pop.keys), "offspring": len(children),
            "failed": int((~np.isfinite(step.F).all(axis=1)).sum()),
            "repaired": int(repaired), "repair_share": repaired / len(children) if children else 0.0,
            "repairs": int(sum(c.repairs for c in children)), "duplicates": step.duplicates,
            "evaluated": len(archive.records)}


def _check_generation_zero(step: Generation, archive: "Archive") -> None:
    """Generation 0 must leave a finite result to breed from and to fix the reference point with."""
    n = len(step.children)
    if n == 0:
        raise SearchError("generation 0 has no candidate: no initial individual and no new sample")
    if np.isfinite(step.F).all(axis=1).any():
        return
    errors = [archive.by_key[c.key].get("error") for c in step.children]
    first = next((str(e).strip().splitlines()[0] for e in errors if e and str(e).strip()), None)
    why = f" (first error: {_short(first, 160)})" if first else ""
    where = f"every evaluation is recorded in {archive.path}" if archive.path else "nothing was written"
    raise SearchError(f"generation 0: all {n}/{n} candidates failed{why}; {where}, and a resume would "
                      "replay the same failures: fix the cause and start a new run")


# ----------------------------------------------------------------------------------------------------
# The archive: one record per evaluation, appended and fsync'ed the moment it is reported
# ----------------------------------------------------------------------------------------------------


class Archive:
    """Every evaluation of the run, in order (``archive.jsonl``; None: in memory only)."""

    def __init__(self, path: Optional[Path], records: list[dict], n_obj: Optional[int]):
        self.path, self.records, self.n_obj = path, records, n_obj
        self.by_key = {r["key"]: r for r in records}
        self.fh = None if path is None else open(path, "a")

    def add(self, g: int, c: Child, objectives: list[float], info: dict) -> dict:
        """Archive one evaluation; returns the record exactly as a resumed run will read it."""
        record = {"generation": g, "genome": c.text, "key": c.key,
                  "objectives": _objectives_to_json(objectives), "repairs": c.repairs,
                  "origin": c.origin, "parents": c.parents, **_json_safe(info)}
        try:
            line = json.dumps(record, allow_nan=False)
        except TypeError as e:
            raise TypeError(f"Evaluation.info of {c.key} is not JSON-serialisable: {e}") from None
        record = json.loads(line)
        if self.fh is not None:
            _append_line(self.fh, line)
        self.records.append(record)
        self.by_key[c.key] = record
        return record

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class ArchivedEvaluate:
    """The full loop's ``Evaluate``: checks a replayed generation against the archive, takes the
    evaluations the archive already holds, and hands the rest to the user's ``Evaluator``, archiving
    each report the moment it arrives. ``evaluate_s``: seconds inside ``evaluate`` in the last call,
    less the loop's own bookkeeping inside ``report``."""

    def __init__(self, archive: Archive, evaluate: Evaluator, progress: "Progress"):
        self.archive, self.evaluate, self.progress = archive, evaluate, progress
        self.evaluate_s = 0.0

    def __call__(self, children: list[Child], g: int) -> np.ndarray:
        _check_replay(self.archive, children, g)
        results = [_objectives_from_json(self.archive.by_key[c.key]["objectives"])
                   if c.key in self.archive.by_key else None for c in children]
        pending = [i for i, r in enumerate(results) if r is None]
        self.evaluate_s = 0.0
        if pending:
            batch = _Batch(g, children, pending, results, self.archive, self.progress)
            t_eval = time.perf_counter()
            self.progress.batch_started(t_eval)
            self.evaluate([children[i].individual for i in pending], g, batch.report)
            missing = [children[pending[i]].key for i, r in enumerate(batch.reported) if not r]
            if missing:
                raise RuntimeError(f"evaluate returned without reporting {len(missing)} individuals: "
                                   f"{missing[:3]}")
            self.evaluate_s = time.perf_counter() - t_eval - batch.bookkeeping_s
        return np.array(results, dtype=float).reshape(len(children), self.archive.n_obj or 0)


class _Batch:
    """The ``report`` callback of one call of the user's ``evaluate``: checks the contract, archives."""

    def __init__(self, g, children, pending, results, archive: Archive, progress: "Progress"):
        self.g, self.children, self.pending, self.results = g, children, pending, results
        self.archive, self.progress = archive, progress
        self.reported = [False] * len(pending)
        self.n_before = len(children) - len(pending)
        self.bookkeeping_s = 0.0

    def report(self, i: int, ev: Evaluation) -> None:
        t0 = time.perf_counter()
        if not 0 <= i < len(self.pending) or self.reported[i]:
            raise ValueError(f"report({i}): index out of range or reported twice")
        if not isinstance(ev, Evaluation):
            raise TypeError(f"report({i}) needs an Evaluation, got {type(ev).__name__}")
        obj = _clean_objectives(ev.objectives)
        if self.archive.n_obj is None:
            self.archive.n_obj = len(obj)
        if len(obj) != self.archive.n_obj:
            raise ValueError(f"report({i}): {len(obj)} objectives, the run has {self.archive.n_obj}")
        clash = sorted(set(ev.info) & set(RESERVED))
        if clash:
            raise ValueError(f"Evaluation.info may not set the loop's fields {clash}")
        record = self.archive.add(self.g, self.children[self.pending[i]], obj, ev.info)
        self.reported[i] = True
        self.results[self.pending[i]] = obj
        self.progress.evaluation(self.g, self.n_before + sum(self.reported), len(self.children), record,
                                 obj, t0)
        self.bookkeeping_s += time.perf_counter() - t0


def _clean_objectives(objectives: Sequence[float]) -> list[float]:
    return [float(x) if math.isfinite(float(x)) else math.inf for x in objectives]  # NaN, -inf: failed


def _check_replay(archive: Archive, children: list[Child], g: int) -> None:
    """On resume, the archive may already hold some of generation g: the replay must breed exactly
    those (same keys, same text, same generation), or the seed, the callables or the code changed."""
    keys = {c.key for c in children}
    orphans = [r["key"] for r in archive.records if r["generation"] == g and r["key"] not in keys]
    if orphans:
        raise ResumeError(f"{archive.path}: holds generation-{g} records the replay did not breed "
                          f"({_short(orphans[0])}): different seed, callables or code? resume with the "
                          "code and options that made the run, or start a new run")
    for c in children:
        rec = archive.by_key.get(c.key)
        if rec is not None and (rec["genome"] != c.text or rec["generation"] != g):
            raise ResumeError(f"{archive.path}: record {_short(rec['key'])} (generation {rec['generation']}, "
                              f"{_short(rec['genome'])}) does not match the replay (generation {g}, "
                              f"{_short(c.text)}): different seed, callables or code? resume with the "
                              "code and options that made the run, or start a new run")


# ----------------------------------------------------------------------------------------------------
# Snapshots and resume: what the run folder must hold, checked before anything is written
# ----------------------------------------------------------------------------------------------------
# Write order per generation: archive lines (appended, fsync'ed, one per evaluation) → the snapshot
# population_{g}.json (atomic) → generations.jsonl (atomic; a copy of the snapshot's statistics). A kill
# anywhere leaves at most a torn last archive line (dropped on resume), a stale *.tmp file (ignored), or a
# generations.jsonl one generation behind (rebuilt from the snapshot); the resume replays from the newest
# snapshot and takes every finished evaluation from the archive.


def save_generation(run_dir: Path, g: int, params: dict, ref: tuple[float, ...], population: Population,
                    stats: list[dict]) -> None:
    snapshot = {"generation": g, **params, "ref_point": list(ref),
                "population": [{"genome": t, "key": k, "objectives": _objectives_to_json(f)}
                               for t, k, f in zip(population.texts, population.keys, population.F)],
                "stats": stats}
    _write_atomic(run_dir / f"population_{g:03d}.json", json.dumps(snapshot, allow_nan=False, indent=1))
    _write_jsonl(run_dir / "generations.jsonl", stats)


@dataclass
class Checkpoint:
    """What a resume starts from; ``repairs`` (path, text) and ``notes`` are applied by the caller
    once every check has passed."""
    records: list[dict]
    population: Population
    stats: list[dict]
    ref: Optional[tuple[float, ...]]
    start: int                        # the first generation to run (replayed from the archive)
    n_obj: Optional[int] = None       # objectives per record, once known
    repairs: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(run_dir: Path, params: dict, ref: Optional[tuple[float, ...]], var: Variation) -> Checkpoint:
    """Read and check a run folder for resume; raises ResumeError (one line) and writes nothing.

    Repaired rather than refused: a torn last archive line (a kill during its append: dropped, its
    evaluation is redone), an unreadable newest snapshot (written when the disk filled or the machine
    died: the previous snapshot is used and the generations after it replayed from the archive, which is
    exactly what an uninterrupted run did since all randomness of generation g comes from
    ``default_rng([seed, g])``), and generations.jsonl (rebuilt from the snapshot). Refused: any other
    damage, because a guess could silently change the run.
    """
    archive_path, gen_path = run_dir / "archive.jsonl", run_dir / "generations.jsonl"
    records, lines, fixed = _parse_jsonl(archive_path)
    repairs = [] if fixed is None else [(archive_path, fixed)]
    notes = [] if fixed is None else [f"{archive_path}: dropped a last line cut short by a kill"]
    snap, snap_path, newest, skipped = _newest_snapshot(run_dir)
    notes += skipped
    if snap is not None:
        _check_params(snap, snap_path, params, ref)
        ref = tuple(float(x) for x in snap["ref_point"])
    n_obj = _check_records(archive_path, records, lines, var, None if ref is None else len(ref))
    beyond = next(((r, n) for r, n in zip(records, lines) if r["generation"] > newest + 1), None)
    if beyond:
        (r, n), has = beyond, (f"the newest snapshot is population_{newest:03d}.json" if newest >= 0
                               else "there is no population_*.json")
        raise ResumeError(f"{archive_path}: line {n} is from generation {r['generation']}, but {has}: "
                          "snapshots were deleted; restore them from a copy or start a new run")
    start = snap["generation"] + 1 if snap else 0
    population, stats = Population([], [], np.zeros((0, 0))), []
    if snap is not None:
        population = _check_population(snap, snap_path, {r["key"]: (r, n) for r, n in zip(records, lines)},
                                       archive_path, n_obj)
        stats = snap.get("stats")
        if stats is None:  # a snapshot written before snapshots carried the statistics
            stats = [s for s in _parse_jsonl(gen_path)[0] if s.get("generation", start) < start]
    text = _jsonl_text(stats)
    if (gen_path.read_text(errors="replace") if gen_path.exists() else "") != text:
        repairs.append((gen_path, text))  # a copy of the snapshot's statistics: rebuilt, never trusted
    n_partial = sum(r["generation"] >= start for r in records)
    notes.append(f"resume {run_dir}: {len(records)} archived evaluations, last snapshot generation "
                 f"{start - 1}, {n_partial} evaluations of generation {start} on already done")
    return Checkpoint(records, population, stats, ref, start, n_obj, repairs, notes)


def _newest_snapshot(run_dir: Path) -> tuple[Optional[dict], Optional[Path], int, list[str]]:
    """(the newest readable snapshot, its path, the newest snapshot file's generation or -1, notes).
    Only the newest file may be unreadable (it is the one a crash can have hit); it is then replayed."""
    numbered = sorted((int(m.group(1)), p) for p in run_dir.glob("population_*.json")
                      if (m := re.fullmatch(r"population_(\d+)\.json", p.name)))
    newest = numbered[-1][0] if numbered else -1
    notes = []
    for k, (g, path) in enumerate(reversed(numbered[-2:])):
        snap = _read_snapshot(path, g)
        if snap is not None:
            return snap, path, newest, notes
        if k == 1:
            raise ResumeError(f"{path}: unreadable, and so is the newer {numbered[-1][1].name}; restore "
                              "the snapshots from a copy or start a new run")
        notes.append(f"{path}: unreadable; replaying generation {g} from the archive instead")
    return None, None, newest, notes


def _check_params(snap: dict, path: Path, params: dict, ref: Optional[tuple[float, ...]]) -> None:
    stored = {k: snap.get(k, "nsga2" if k == "algorithm" else None) for k in params}  # older runs: nsga2
    wrong = [k for k in params if stored[k] != params[k]]
    if wrong:
        raise ResumeError(f"{path}: the run was made with "
                          + ", ".join(f"{k}={stored[k]!r}" for k in wrong) + ", this resume asks for "
                          + ", ".join(f"{k}={params[k]!r}" for k in wrong)
                          + "; resume with the run's settings or start a new run elsewhere")
    stored_ref = tuple(float(x) for x in snap["ref_point"])
    if ref is not None and ref != stored_ref:
        raise ResumeError(f"{path}: resume with ref_point {ref} but the run uses {stored_ref}; "
                          "leave ref_point out or pass the run's")


def _check_population(snap: dict, path: Path, by_key: dict, archive_path: Path, n_obj: int) -> Population:
    """The snapshot's members, each equal to its archive record (genome, objectives, generation)."""
    for m in snap["population"]:
        r, n = by_key.get(m["key"], (None, None))
        if r is None or r["genome"] != m["genome"] or r["objectives"] != m["objectives"] \
                or r["generation"] > snap["generation"]:
            at = f"line {n} of {archive_path.name}" if r else f"no record in {archive_path.name}"
            raise ResumeError(f"{path}: member {_short(m['key'])} does not match {at}: one of the two "
                              "files was edited; restore it from a copy or start a new run")
    members = snap["population"]
    F = np.array([_objectives_from_json(m["objectives"]) for m in members], dtype=float)
    return Population([m["genome"] for m in members], [m["key"] for m in members],
                      F.reshape(len(members), n_obj))


def _check_records(path: Path, records: list, lines: list[int], var: Variation,
                   n_obj: Optional[int]) -> Optional[int]:
    """Every archive record well formed, in generation order, with ``n_obj`` objectives (None: as
    many as the first), its key unique and its genome's. Returns the number of objectives."""
    first_line: dict[str, int] = {}
    last_g = 0
    for r, n in zip(records, lines):
        at = f"{path}: line {n}"
        if not (isinstance(r, dict) and type(r.get("generation")) is int and r["generation"] >= 0
                and isinstance(r.get("genome"), str) and isinstance(r.get("key"), str)
                and isinstance(r.get("objectives"), list) and r["objectives"]
                and all(x is None or type(x) in (int, float) for x in r["objectives"])):
            raise ResumeError(f"{at} is not an archive record (generation, genome, key, objectives); "
                              "restore it from a copy or start a new run")
        n_obj = len(r["objectives"]) if n_obj is None else n_obj
        if len(r["objectives"]) != n_obj:
            raise ResumeError(f"{at} has {len(r['objectives'])} objectives, the run has {n_obj}; restore "
                              "it from a copy or start a new run")
        if r["generation"] < last_g:
            raise ResumeError(f"{at}: generation {r['generation']} after generation {last_g}: the file "
                              "was edited or two processes wrote to it; restore it or start a new run")
        if r["key"] in first_line:
            raise ResumeError(f"{at} repeats the key of line {first_line[r['key']]}: two processes wrote "
                              "to this run; restore the archive from a copy or start a new run")
        try:  # the user's decode may raise anything on edited text
            ind = var.decode(r["genome"])
            ok = var.encode(ind) == r["genome"] and var.key(ind) == r["key"]
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            raise ResumeError(f"{at}: genome {_short(r['genome'])!r} does not decode to its key "
                              f"{_short(r['key'])!r} (edited?); restore the line or start a new run")
        first_line[r["key"]], last_g = n, r["generation"]
    return n_obj


def _read_snapshot(path: Path, g: int) -> Optional[dict]:
    """The snapshot of generation g, or None when it cannot be read or is not whole."""
    try:
        snap = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    members = snap.get("population") if isinstance(snap, dict) else None
    whole = (isinstance(members, list) and snap.get("generation") == g
             and isinstance(snap.get("ref_point"), list) and isinstance(snap.get("stats", []), list)
             and all(isinstance(m, dict) and {"genome", "key", "objectives"} <= set(m) for m in members))
    return snap if whole else None


# ----------------------------------------------------------------------------------------------------
# Progress: the words a run prints, with ETAs (measures only; the search reads nothing back)
# ----------------------------------------------------------------------------------------------------


class Progress:
    """One line per evaluation and one per generation. The ETA is this process's mean time per
    evaluation times the evaluations left."""

    def __init__(self, log: Callable[[str], None], generations: int, n_offspring: int,
                 format_info: Optional[Callable[[dict], str]]):
        self.log, self.generations, self.n_offspring, self.format_info = log, generations, n_offspring, format_info
        self.n_evaluated, self.eval_seconds = 0, 0.0  # evaluations done by this process, their time
        self.t_batch = self.t_last = time.perf_counter()

    def per_eval(self) -> float:
        return self.eval_seconds / self.n_evaluated if self.n_evaluated else math.nan

    def batch_started(self, t: float) -> None:
        self.t_batch = self.t_last = t

    def evaluation(self, g: int, done: int, n_total: int, record: dict, obj: list[float], t: float) -> None:
        self.n_evaluated += 1
        self.eval_seconds += t - self.t_last
        self.t_last = t
        left = (n_total - done) + self.n_offspring * (self.generations - g)
        if self.format_info is not None:  # the caller's words for what it measured
            status = " " + self.format_info(record)
        else:
            status = f" {record['status']}" if "status" in record else ""
        self.log(f"gen {g} [{done}/{n_total}] {_short(record['key'])} {_fmt_obj(obj)}{status} "
                 f"{_fmt_time(t - self.t_batch)} ETA {_fmt_time(self.per_eval() * left)}")

    def generation(self, g: int, stat: dict) -> None:
        left = self.generations - g
        eta = self.per_eval() * self.n_offspring * left if left else 0.0
        all_failed = " (all failed: population unchanged)" if stat["failed"] == stat["offspring"] > 0 else ""
        self.log(f"gen {g}/{self.generations} done: hypervolume {stat['hypervolume']:.6g} "
                 f"(archive {stat['hypervolume_archive']:.6g}), front {stat['front_size']}/"
                 f"{stat['population']}, offspring {stat['offspring']}, repaired {stat['repaired']} "
                 f"({100 * stat['repair_share']:.0f}%), duplicates {stat['duplicates']}, failed "
                 f"{stat['failed']}/{stat['offspring']}{all_failed}, {_fmt_time(stat['wall_s'])} "
                 f"(bookkeeping {1000 * stat['bookkeeping_s']:.1f} ms), ETA {_fmt_time(eta)}")


# ----------------------------------------------------------------------------------------------------
# Small helpers: JSON, text, files
# ----------------------------------------------------------------------------------------------------


def _objectives_to_json(obj: Sequence[float]) -> list[Optional[float]]:
    return [float(x) if math.isfinite(x) else None for x in obj]  # strict JSON has no inf: null


def _objectives_from_json(obj: Sequence[Optional[float]]) -> list[float]:
    return [math.inf if x is None else float(x) for x in obj]


def _json_safe(x: Any) -> Any:
    """Plain JSON types; non-finite floats become null (strict JSON, readable by any tool)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_obj(obj: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in obj) + ")"


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _append_line(fh, line: str) -> None:
    """Append one line and force it to disk: a kill right after loses nothing."""
    fh.write(line + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _parse_jsonl(path: Path) -> tuple[list, list[int], Optional[str]]:
    """Read a JSONL file and write nothing: (rows, their 1-based line numbers, the repaired text or
    None when the file needs no repair). Text after the last newline that is not valid JSON is a line
    cut short by a kill: it is left out of the repaired text. An invalid line elsewhere raises."""
    if not path.exists():
        return [], [], None
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows, numbers = [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode()))
            numbers.append(i + 1)
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == len(lines) - 1:  # a kill can tear a character too: bytes, then decode
                return rows, numbers, data[: len(data) - len(raw)].decode()
            raise ResumeError(f"{path}: line {i + 1} is not valid JSON, and not a last line cut short by a "
                              "kill: the file was damaged or edited; restore it from a copy") from None
    return rows, numbers, None if not data or data.endswith(b"\n") else data.decode() + "\n"


def _read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a torn last line (the process was killed mid-write) is dropped and the
    file rewritten without it. A bad line elsewhere is corruption and raises ResumeError."""
    rows, _, fixed = _parse_jsonl(Path(path))
    if fixed is not None:
        _write_atomic(Path(path), fixed)
    return rows


def _jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, _jsonl_text(rows))


def _write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
    if os.name == "posix":  # and the rename itself reaches the disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
