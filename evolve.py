"""NSGA-II: how STAR refines a population of genomes (D16; the paper's §4 and its Figure 1 loop).

NSGA-II (Deb et al., 2002) moves a population towards the Pareto front (all objectives minimised):
1. **Non-dominated sort**: the points nobody dominates are front 1 (rank 0); peel them off, repeat.
2. **Crowding distance** in a front: per objective, the gap between a point's two neighbours over the
   objective's range; extremes get infinity. Large crowding = isolated = worth keeping.
3. **(μ+λ) survival**: parents and children compete together, front by front; the front that does
   not fit whole is cut by crowding, largest first, ties broken by the seeded generator.
4. **Binary tournament** for parents: lower rank, then larger crowding, then a coin flip.
5. **Constraints** (Deb's constrained domination): feasible first, then the smaller violation.
A failed training scores infinity (D16): NaN/inf rows form a last front, kept out of the crowding.

The loop is generic: individuals are opaque, handled by a ``Variation``'s callables; sizes are a
``Search``. ``generation_step`` is one generation: generation 0 is the initial population (the D15
baselines, then samples); later ones breed ``n_offspring`` children (tournament → crossover or copy →
mutate → repair; ``algorithm="random"``: fresh samples, the control), evaluate them, apply survival.
``nsga2`` loops it through three seams: ``evaluate`` (children → objectives), ``on_generation`` (after
each generation; raising ``StopSearch`` ends the search) and ``start`` (a ``State`` to go on from).
Generation g draws all its randomness from ``np.random.default_rng([seed, g])``: reproducible, resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np


# --- NSGA-II primitives (D16). F is an (n points, m objectives) array, every objective minimised ---
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
    """Crowding distance of each row of one front (step 2); ties at an extreme all get inf, NaN/inf rows 0."""
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


def constrained_sort(F: np.ndarray, cv=None) -> list[np.ndarray]:
    """Fronts under constrained domination (step 5; ``cv`` ≥ 0 each row's violation), best first."""
    if cv is None or not (np.asarray(cv) > 0).any():
        return non_dominated_sort(F)
    F, cv = _as_matrix(F), np.asarray(cv, dtype=float)
    finite = np.isfinite(F).all(axis=1)
    ok, bad = np.flatnonzero(finite & (cv <= 0)), np.flatnonzero(finite & (cv > 0))
    fronts = [ok[f] for f in non_dominated_sort(F[ok])] + [bad[cv[bad] == v] for v in np.unique(cv[bad])]
    return fronts + [np.flatnonzero(~finite)] * bool((~finite).any())


def rank_and_crowding(F: np.ndarray, cv=None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its front index (0 = non-dominated) and its crowding distance within that front."""
    F = _as_matrix(F)
    rank = np.zeros(len(F), dtype=int)
    crowd = np.zeros(len(F))
    for r, front in enumerate(constrained_sort(F, cv)):
        rank[front] = r
        crowd[front] = crowding_distance(F[front])
    return rank, crowd


def select_survivors(F: np.ndarray, n: int, rng: np.random.Generator, cv=None) -> np.ndarray:
    """(μ+λ) survival of ``n`` rows (step 3 above); returns the kept rows, ascending."""
    F = _as_matrix(F)
    keep: list[int] = []
    for front in constrained_sort(F, cv):
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
    """``n`` binary tournaments between two distinct members (step 4); returns the winners' indices."""
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


# --- the search: one generation of NSGA-II, and the loop around it (D16) ---------------------------
ALGORITHMS = ("nsga2", "random")  # "random": the built-in control, fresh samples every generation


@dataclass(frozen=True)
class Variation:
    """The problem's callables (deterministic given ``rng``, arguments left alone) and rates: crossover
    with ``p_crossover`` (else a copy of parent a), mutation with ``p_mutation``, then ``repair``; each
    child round-trips through ``encode``/``decode``. ``key`` is canonical; ``feasible(ind)`` False: bred
    again (a constraint known before evaluation); ``violation(key) ≥ 0``: step 5."""
    sample: Callable[[np.random.Generator], Any]
    crossover: Callable[[Any, Any, np.random.Generator], Any]
    mutate: Callable[[Any, np.random.Generator], Any]
    repair: Callable[[Any, np.random.Generator], tuple[Any, int]]
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]
    key: Callable[[Any], str]
    feasible: Optional[Callable[[Any], bool]] = None
    violation: Optional[Callable[[str], float]] = None
    p_crossover: float = 0.9
    p_mutation: float = 1.0
    max_retries: int = 50

    def __post_init__(self):
        if not (0.0 <= self.p_crossover <= 1.0 and 0.0 <= self.p_mutation <= 1.0) or self.max_retries < 0:
            raise ValueError("p_crossover and p_mutation are probabilities, and max_retries >= 0")


@dataclass(frozen=True)
class Search:
    """μ (``pop_size``), λ (``n_offspring``), the generations after generation 0, the seed, the algorithm."""
    pop_size: int = 16
    n_offspring: int = 16
    generations: int = 18
    seed: int = 0
    algorithm: str = "nsga2"

    def __post_init__(self):
        if self.pop_size < 1 or self.n_offspring < 0 or self.generations < 0:
            raise ValueError("need pop_size >= 1, n_offspring >= 0, generations >= 0")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")


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
    texts: list[str]
    keys: list[str]
    F: np.ndarray        # (members, objectives), inf for failed candidates

    @staticmethod
    def empty() -> "Population":
        return Population([], [], np.zeros((0, 0)))


@dataclass
class Generation:
    population: Population   # the survivors
    children: list[Child]    # the new individuals, in evaluation order
    F: np.ndarray            # (children, objectives)
    duplicates: int          # children regenerated because their key was already evaluated
    notes: list[str]         # what the breeder had to give up on, for the log


@dataclass
class State:
    """The survivors, the keys of every individual evaluated, and the last generation done (-1: none)."""
    population: Population
    seen: set[str]
    generation: int = -1


Scorer = Callable[[list[Child], int], np.ndarray]


def generation_step(population: Population, g: int, var: Variation, evaluate: Scorer, seen: set[str],
                    search: Search, initial: Sequence = ()) -> Generation:
    """Generation g: breed (avoiding ``seen``), evaluate, survive; pure given ``evaluate``."""
    rng = np.random.default_rng([search.seed, g])
    cv = lambda keys: None if var.violation is None else np.array([var.violation(k) for k in keys])  # noqa: E731
    breed = _Breeder(var, rng, seen)
    if g == 0:
        children = breed.initial(initial)
        children += breed.samples(search.pop_size - len(children))
    elif search.algorithm == "random":
        children = breed.samples(search.n_offspring)
    else:
        rank, crowd = rank_and_crowding(population.F, cv(population.keys))
        children = breed.offspring(population, rank, crowd, search.n_offspring)
    F_new = evaluate(children, g)  # (children, objectives)
    texts = population.texts + [c.text for c in children]
    keys = population.keys + [c.key for c in children]
    F = np.vstack([population.F, F_new]) if population.keys else F_new
    keep = select_survivors(F, search.pop_size, rng, cv(keys))  # parents and children together
    survivors = Population([texts[i] for i in keep], [keys[i] for i in keep], F[keep])
    return Generation(survivors, children, F_new, breed.duplicates, breed.notes)


class StopSearch(Exception):
    """Raised by ``on_generation`` to end the search after that generation (e.g. a patience rule)."""


def nsga2(initial: Sequence, var: Variation, evaluate: Scorer, search: Search, *,
          start: Optional[State] = None,
          on_generation: Optional[Callable[[Generation, State], None]] = None) -> State:
    """``generation_step`` up to ``search.generations``, from ``start`` (default: nothing evaluated)."""
    state = start or State(Population.empty(), set())
    for g in range(state.generation + 1, search.generations + 1):
        step = generation_step(state.population, g, var, evaluate, state.seen, search, initial)
        state = State(step.population, state.seen | {c.key for c in step.children}, g)
        if on_generation is not None:
            try:
                on_generation(step, state)
            except StopSearch:
                break
    return state


def clean_objectives(objectives: Sequence[float]) -> list[float]:
    return [float(x) if math.isfinite(float(x)) else math.inf for x in objectives]  # NaN, -inf: failed


def record(generation: int, c: Child, objectives: Sequence[float], info: dict) -> dict:
    """An archive's record of one evaluated child (null for a failed, infinite objective), then `info`."""
    return {"generation": generation, "genome": c.text, "key": c.key,
            "objectives": [float(x) if math.isfinite(x) else None for x in objectives], "repairs": c.repairs,
            "origin": c.origin, "parents": c.parents, **info}


def shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class _Breeder:
    """One generation's children; a duplicate or infeasible one is bred again, up to ``max_retries``."""

    def __init__(self, var: Variation, rng: np.random.Generator, seen: set[str]):
        self.var, self.rng, self.seen = var, rng, seen
        self.batch: set[str] = set()  # keys of this generation's children so far
        self.duplicates = self.infeasible = 0  # children bred again: already evaluated / over a budget
        self.notes: list[str] = []

    def _feasible(self, ind) -> bool:
        return self.var.feasible is None or bool(self.var.feasible(ind))

    def initial(self, individuals: Sequence) -> list[Child]:
        children = []
        for ind in individuals:  # e.g. the D15 baselines, evaluated first
            text = self.var.encode(ind)
            k = self.var.key(self.var.decode(text))
            if k in self.batch or not self._feasible(ind):
                why = "is over a budget" if k not in self.batch else "duplicates an earlier one"
                self.notes.append(f"initial individual {shorten(text)} {why}; skipped")
                self.duplicates += k in self.batch
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
                fresh = k not in self.seen and k not in self.batch
                if fresh and self._feasible(ind):
                    break
                self.duplicates += not fresh
                self.infeasible += fresh
            else:
                self.notes.append(f"no new feasible individual after {self.var.max_retries} retries; "
                                  f"{len(children)} instead of {n}")
                break
            self.batch.add(k)
            children.append(Child(ind, text, k, int(n_changed), origin, parents))
        return children
