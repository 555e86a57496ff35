"""NSGA-II: how STAR refines a population of genomes (D16; the paper's §3.3 and its Figure 1 loop).

STAR trades quality against efficiency, so there is no single best genome but a *Pareto front*. All
objectives are **minimised**; a *dominates* b when a is no worse in every objective and strictly
better in one. NSGA-II (Deb et al., 2002) keeps a population that approaches the front and spreads:

1. **Fast non-dominated sort.** Count, for every point, how many points dominate it; count 0 is front
   1 (rank 0). Remove it, decrement the counts of the points it dominated, and the new zeros form
   front 2; repeat. O(m·n²) for n points and m objectives.
2. **Crowding distance** (within one front). For each objective, sort the front; every point gets the
   gap between its two neighbours over the objective's range; the extremes get infinity so the ends
   of the front are kept; a constant objective adds 0. Large crowding = isolated = worth keeping.
3. **(μ+λ) survival.** Parents and offspring compete together (elitism: a good parent is never lost to
   a bad child), front by front; the first front that does not fit whole is cut by crowding distance,
   largest first, ties broken by the seeded generator.
4. **Binary tournament** for parents: the lower rank wins, then the larger crowding, then a coin flip.
5. **Constraints** (Deb's constrained domination, as Optuna's ``constraints_func``): a feasible point
   ranks before an infeasible one, and of two infeasible ones the smaller violation first. A
   constraint known before evaluation is a ``feasible`` test instead: such children are bred again.

**Hypervolume** measures a front with one number: the volume it dominates up to a reference point,
fixed at the start of a run (D16) so that it is comparable across generations: the search's progress
curve. Exact, by slicing: in 1-D a length, in 2-D a sweep over the staircase, in d-D a sum over slabs
along the last objective of (d−1)-D hypervolumes (O(n^(d−1)): slow beyond about 4 objectives).

A candidate whose training failed (diverged, out of memory, raised) has infinite objectives (D16); a
row with NaN or inf ranks in a last front of its own and never enters the crowding arithmetic.

The loop is generic: individuals are opaque and handled through the callables of a ``Variation``
(sample, crossover, mutate, repair, a canonical ``key``, and ``encode`` / ``decode`` to text: for STAR
genomes ``str(g)`` and ``Genome.parse``); its sizes are a ``Search``. **``generation_step``** is one whole
generation in a screenful: generation 0 is the initial population (given individuals, e.g. the D15
baselines, then samples); every later generation breeds ``n_offspring`` children (tournament →
crossover or copy → mutate → repair), regenerating any child whose key was already evaluated (bounded
retries), evaluates them in one batch, and applies (μ+λ) survival. **``nsga2``** runs it generation
after generation. ``algorithm="random"`` replaces the bred children by fresh samples: the built-in
control that shows whether the search does better than chance at the same number of evaluations.

**Reproducible, hence resumable.** All randomness of generation g comes from
``np.random.default_rng([seed, g])``, so a generation can be replayed from the previous population
alone. ``nsga2`` has three seams and nothing else: ``evaluate`` (how children get their objectives),
``on_generation`` (called after each generation) and ``start`` (the state to continue from). The run
folder, its archive, snapshots, resume and progress lines are runlog.py's, plugged into those seams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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


def constrained_sort(F: np.ndarray, cv=None) -> list[np.ndarray]:
    """Fronts under constrained domination (Deb's rule; ``cv`` ≥ 0 the constraint violation of each
    row, None or all 0: plain ``non_dominated_sort``): the feasible rows' fronts, then the infeasible
    rows by their violation, smallest first (one front per value), then the non-finite rows."""
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
    """(μ+λ) survival: whole fronts first (``constrained_sort``); the front that does not fit is cut by
    crowding distance (largest first), ties broken at random by ``rng``. Returns kept rows, ascending."""
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

# ----------------------------------------------------------------------------------------------------
# The search: one generation of NSGA-II, and the loop around it (D16)
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
# as soon as that individual's evaluation is known (any order), so a caller can archive it right away.
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
    """The problem's callables (individuals are opaque to the loop) and the variation rates.

    ``sample(rng)``; ``crossover(a, b, rng)`` (with probability ``p_crossover``, else the child is a
    copy of the first parent); ``mutate(ind, rng)`` (with probability ``p_mutation``; the per-entry rate
    is the callable's business); ``repair(ind, rng) -> (ind, n_changed)`` after every sample and child;
    ``key(ind)`` canonical, for duplicate detection; ``encode``/``decode`` the text form (a child is
    always round-tripped through it, so a resumed run sees exactly what an uninterrupted one saw). The
    callables must be deterministic given ``rng`` and must not modify their arguments. Optional:
    ``feasible(ind)`` (False: bred again) and ``violation(key) ≥ 0`` (constrained domination)."""
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
    """The search's settings: μ (``pop_size``), λ (``n_offspring``), the generations after generation
    0, the seed of all its randomness, and the algorithm (NSGA-II or the random control)."""
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
    """The survivors: text form, key and objectives of each member."""
    texts: list[str]
    keys: list[str]
    F: np.ndarray        # (members, objectives), inf for failed candidates

    @staticmethod
    def empty() -> "Population":
        return Population([], [], np.zeros((0, 0)))


@dataclass
class Generation:
    """What one generation produced."""
    population: Population   # the survivors
    children: list[Child]    # the new individuals, in evaluation order
    F: np.ndarray            # (children, objectives)
    duplicates: int          # children regenerated because their key was already evaluated
    notes: list[str]         # what the breeder had to give up on, for the log


@dataclass
class State:
    """Where a search stands: the survivors, the keys of every individual evaluated, and the last
    generation done (-1: none yet)."""
    population: Population
    seen: set[str]
    generation: int = -1


# a Scorer: score(children, generation) -> their objectives, (children, m): how generation_step gets its numbers
Scorer = Callable[[list[Child], int], np.ndarray]


def generation_step(population: Population, g: int, var: Variation, evaluate: Scorer, seen: set[str],
                    search: Search, initial: Sequence = ()) -> Generation:
    """One generation of NSGA-II: breed, evaluate, (μ+λ) survival.

    Generation 0 is ``initial`` plus samples up to ``pop_size``. Later generations breed
    ``n_offspring`` children: binary tournament on (rank, crowding) → crossover or copy → mutate →
    repair, each child regenerated while its key is in ``seen`` (the keys of earlier generations) or
    already in this batch. With ``algorithm="random"`` the children are fresh samples instead, and
    everything else (evaluation, survival) is the same. All randomness comes from
    ``default_rng([seed, g])``, so this function is a pure function of its arguments and ``evaluate``.
    """
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
    """The whole search: ``generation_step`` after ``generation_step`` up to ``search.generations``,
    from ``start`` (default: nothing evaluated yet). ``on_generation(step, state)`` runs after each
    generation (the place to archive, snapshot, report, or end the search by raising ``StopSearch``)."""
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


def clean_objectives(objectives: Sequence[float]) -> list[float]:
    return [float(x) if math.isfinite(float(x)) else math.inf for x in objectives]  # NaN, -inf: failed


def shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class _Breeder:
    """Makes one generation's children: variation and repair, a round trip through the text form (the
    individual a resumed run would see), and regeneration of a child whose key was already evaluated,
    up to ``max_retries`` times."""

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
