"""NSGA-II and the search loop: how STAR refines a population of genomes (SPEC §6, D16; §8).

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

The loop (``nsga2``) is generic: individuals are opaque and handled through callables (sample,
crossover, mutate, repair, a canonical ``key``) and serialised with ``encode`` / ``decode`` (for STAR
genomes: ``str(g)`` and ``Genome.parse``). Generation 0 is the initial population (given individuals,
e.g. the D15 baselines, then samples); every later generation breeds ``n_offspring`` children
(tournament → crossover or copy → mutate → repair), regenerating any child whose key was already
evaluated (bounded retries), evaluates them in one batch, and applies survival.

**Reproducible and resumable.** All randomness of generation g comes from
``np.random.default_rng([seed, g])``, so a generation can be replayed from the previous population
alone. Every evaluation is appended to ``archive.jsonl`` and fsync'ed the moment it is reported, each
generation ends with a population snapshot, and ``resume=True`` replays the interrupted generation,
taking already-archived evaluations from the archive: a killed run loses no finished evaluation and
repeats none, and ends with the same archive as an uninterrupted run (SPEC §8).

What this does not do: constraints, parallel evaluation (the batch ``evaluate`` lets a parallel
evaluator be dropped in), fast hypervolume beyond ~4 objectives (the slicing is exact but O(n^(d−1))).
"""
from __future__ import annotations

import json
import math
import os
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
# The search loop (D16) with its archive and resume (SPEC §8)
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
          format_info: Optional[Callable[[dict], str]] = None) -> SearchResult:
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

    ``evaluate(individuals, generation, report)`` is called once per generation with all new
    individuals and must call ``report(i, Evaluation)`` for each index as soon as that result is
    known; the loop archives it at once (``sequential(fn)`` adapts a one-at-a-time ``fn``). A failed
    candidate is *reported* with inf objectives and its error in ``info`` (D16); an exception out of
    ``evaluate`` stops the run, which ``resume`` then continues.

    ``run_dir`` (None: in memory) receives ``archive.jsonl`` (one record per evaluation: generation,
    genome = encode, key, objectives with null for inf, repairs, origin, parents' keys, then
    ``Evaluation.info``), ``generations.jsonl`` (one stats line per generation) and
    ``population_{g:03d}.json`` (the survivors); ``resume=True`` continues the run found there.
    ``ref_point`` defaults to ``default_ref_point`` of generation 0's objectives, fixed for the run.
    ``format_info(record) -> str``, if given, words the progress line of each evaluation (e.g. the
    measured perplexity, parameters and cache), instead of the bare status.
    """
    if pop_size < 1 or n_offspring < 0 or generations < 0 or max_retries < 0:
        raise ValueError("need pop_size >= 1, n_offspring >= 0, generations >= 0, max_retries >= 0")
    if not (0.0 <= p_crossover <= 1.0 and 0.0 <= p_mutation <= 1.0):
        raise ValueError("p_crossover and p_mutation are probabilities")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    search = _Search(initial=list(initial), sample=sample, evaluate=evaluate, crossover=crossover,
                     mutate=mutate, repair=repair, encode=encode, decode=decode, key=key,
                     pop_size=pop_size, n_offspring=n_offspring, generations=generations,
                     p_crossover=p_crossover, p_mutation=p_mutation, seed=seed,
                     run_dir=None if run_dir is None else Path(run_dir), ref_point=ref_point,
                     max_retries=max_retries, log=log, on_generation=on_generation, format_info=format_info)
    return search.run(resume)


# ----------------------------------------------------------------------------------------------------
# Implementation of the loop
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Child:
    """A new individual of this generation, before evaluation."""
    individual: Any
    text: str
    key: str
    repairs: int
    origin: str          # initial | sample | crossover | mutation
    parents: list[str]   # parents' keys


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


def _read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a torn last line (the process was killed mid-write) is dropped and the
    file rewritten without it. A bad line elsewhere is corruption and raises."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
            else:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    if torn or (text and not text.endswith("\n")):
        _write_jsonl(path, rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one


class _Search:
    def __init__(self, *, initial, sample, evaluate, crossover, mutate, repair, encode, decode, key,
                 pop_size, n_offspring, generations, p_crossover, p_mutation, seed, run_dir,
                 ref_point, max_retries, log, on_generation, format_info):
        self.initial, self.sample, self.evaluate = initial, sample, evaluate
        self.crossover, self.mutate, self.repair = crossover, mutate, repair
        self.encode, self.decode, self.key = encode, decode, key
        self.pop_size, self.n_offspring, self.generations = pop_size, n_offspring, generations
        self.p_crossover, self.p_mutation, self.seed = p_crossover, p_mutation, seed
        self.run_dir, self.max_retries = run_dir, max_retries
        self.log, self.on_generation, self.format_info = log, on_generation, format_info
        self.ref: Optional[tuple[float, ...]] = None if ref_point is None else tuple(map(float, ref_point))
        self.n_obj: Optional[int] = None if ref_point is None else len(self.ref)
        # population: texts, keys and objectives of the survivors
        self.pop_text: list[str] = []
        self.pop_key: list[str] = []
        self.pop_F = np.zeros((0, 0))
        self.records: list[dict] = []
        self.record_of: dict[str, dict] = {}   # key -> archive record
        self.stats: list[dict] = []
        self.generation = -1                   # last completed generation
        # for ETAs: evaluations done by this process and the time they took
        self.n_evaluated, self.eval_seconds = 0, 0.0
        self.duplicates = 0                    # regenerated children in the current generation
        self.archive_fh = self.stats_fh = None

    # -- parameters a resume must agree with
    def _params(self) -> dict:
        return {"seed": self.seed, "pop_size": self.pop_size, "n_offspring": self.n_offspring,
                "p_crossover": self.p_crossover, "p_mutation": self.p_mutation}

    def run(self, resume: bool) -> SearchResult:
        start = 0
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume:
                start = self._load()
            elif (self.run_dir / "archive.jsonl").exists() or list(self.run_dir.glob("population_*.json")):
                raise FileExistsError(f"{self.run_dir} already holds a search; pass resume=True "
                                      "or choose another directory")
            self.archive_fh = open(self.run_dir / "archive.jsonl", "a")
            self.stats_fh = open(self.run_dir / "generations.jsonl", "a")
        try:
            for g in range(start, self.generations + 1):
                self._generation(g)
        finally:
            for fh in (self.archive_fh, self.stats_fh):
                if fh is not None:
                    fh.close()
        return self._result()

    def _result(self) -> SearchResult:
        return SearchResult(population=[self.decode(t) for t in self.pop_text], objectives=self.pop_F.copy(),
                            records=self.records, stats=self.stats, ref_point=self.ref,
                            generation=self.generation)

    # -- resume: archive + last snapshot
    def _load(self) -> int:
        d = self.run_dir
        self.records = _read_jsonl(d / "archive.jsonl")
        self.record_of = {r["key"]: r for r in self.records}
        snaps = sorted(d.glob("population_*.json"))
        start = 0
        if snaps:
            snap = json.loads(snaps[-1].read_text())
            wrong = {k: (snap[k], v) for k, v in self._params().items() if snap[k] != v}
            if wrong:
                raise ValueError(f"resume with different parameters (stored, given): {wrong}")
            stored_ref = tuple(snap["ref_point"])
            if self.ref is not None and self.ref != stored_ref:
                raise ValueError(f"resume with ref_point {self.ref} but the run uses {stored_ref}")
            self.ref, self.n_obj = stored_ref, len(stored_ref)
            self.pop_text = [m["genome"] for m in snap["population"]]
            self.pop_key = [m["key"] for m in snap["population"]]
            self.pop_F = np.array([_objectives_from_json(m["objectives"]) for m in snap["population"]],
                                  dtype=float).reshape(len(self.pop_text), self.n_obj)
            self.generation = snap["generation"]
            start = self.generation + 1
        elif self.records:
            self.n_obj = len(self.records[0]["objectives"])
        ahead = [r["key"] for r in self.records if r["generation"] > start]
        if ahead:
            raise ValueError(f"{d}: archive has records past generation {start} but no snapshot for "
                             f"generation {start}: {ahead[:3]}")
        # generations.jsonl lines past the snapshot belong to the generation being replayed
        self.stats = [s for s in _read_jsonl(d / "generations.jsonl") if s["generation"] < start]
        _write_jsonl(d / "generations.jsonl", self.stats)
        n_partial = sum(r["generation"] == start for r in self.records)
        self.log(f"resume {d}: {len(self.records)} archived evaluations, last snapshot generation "
                 f"{start - 1}, {n_partial} evaluations of generation {start} already done")
        return start

    # -- one generation
    def _generation(self, g: int) -> None:
        t_start = time.perf_counter()
        rng = np.random.default_rng([self.seed, g])  # all of generation g's randomness
        # keys evaluated in earlier generations; this generation's own archived records (on resume)
        # are reused below, not treated as duplicates, so the replay breeds the same children
        seen = {k for k, r in self.record_of.items() if r["generation"] < g}
        self.duplicates = 0
        children = self._initial_children(rng, seen) if g == 0 else self._offspring(rng, seen)
        child_keys = {c.key for c in children}
        orphans = [k for k, r in self.record_of.items() if r["generation"] == g and k not in child_keys]
        if orphans:
            raise RuntimeError(f"the archive holds generation-{g} records the replay did not breed "
                               f"({orphans[:3]}): different seed, callables or code?")

        results: list[Optional[list[float]]] = [None] * len(children)
        pending = []
        for i, c in enumerate(children):
            rec = self.record_of.get(c.key)
            if rec is None:
                pending.append(i)
            elif rec["genome"] != c.text or rec["generation"] != g:
                raise RuntimeError(f"archive record {rec['key']} (generation {rec['generation']}, "
                                   f"{rec['genome']}) does not match the replay (generation {g}, {c.text}):"
                                   " different seed, callables or code?")
            else:
                results[i] = _objectives_from_json(rec["objectives"])
        evaluate_s = self._evaluate(g, children, pending, results)

        # (mu + lambda) survival over the old population and the children
        F_new = np.array(results, dtype=float).reshape(len(children), self.n_obj or 0)
        if g == 0 and self.ref is None:
            self.ref = default_ref_point(F_new)
        texts = (self.pop_text if g > 0 else []) + [c.text for c in children]
        keys = (self.pop_key if g > 0 else []) + [c.key for c in children]
        F = np.vstack([self.pop_F, F_new]) if g > 0 else F_new
        keep = select_survivors(F, self.pop_size, rng)
        self.pop_text, self.pop_key, self.pop_F = [texts[i] for i in keep], [keys[i] for i in keep], F[keep]
        self.generation = g

        archive_F = np.array([_objectives_from_json(r["objectives"]) for r in self.records], dtype=float)
        repaired = sum(c.repairs > 0 for c in children)
        stat = {"generation": g,
                "hypervolume": hypervolume(self.pop_F, self.ref),
                "hypervolume_archive": hypervolume(archive_F.reshape(-1, len(self.ref)), self.ref),
                "front_size": len(_finite_front(self.pop_F)),
                "population": len(keep), "offspring": len(children),
                "failed": int((~np.isfinite(F_new).all(axis=1)).sum()),
                "repaired": int(repaired), "repair_share": repaired / len(children) if children else 0.0,
                "repairs": int(sum(c.repairs for c in children)), "duplicates": self.duplicates,
                "evaluated": len(self.records)}
        self._finish_generation(g, stat, t_start, evaluate_s)

    def _finish_generation(self, g: int, stat: dict, t_start: float, evaluate_s: float) -> None:
        wall = time.perf_counter() - t_start
        stat.update(wall_s=wall, evaluate_s=evaluate_s, bookkeeping_s=wall - evaluate_s)
        if self.run_dir is not None:
            # the stats line first, the snapshot last: a kill between the two replays generation g,
            # and the replay rewrites g's stats line (see _load)
            _append_line(self.stats_fh, json.dumps(stat, allow_nan=False))
            snapshot = {"generation": g, **self._params(), "ref_point": list(self.ref),
                        "population": [{"genome": t, "key": k, "objectives": _objectives_to_json(f)}
                                       for t, k, f in zip(self.pop_text, self.pop_key, self.pop_F)]}
            _write_atomic(self.run_dir / f"population_{g:03d}.json",
                          json.dumps(snapshot, allow_nan=False, indent=1))
        self.stats.append(stat)
        left = self.generations - g
        eta = self._per_eval() * self.n_offspring * left if left else 0.0
        self.log(f"gen {g}/{self.generations} done: hypervolume {stat['hypervolume']:.6g} "
                 f"(archive {stat['hypervolume_archive']:.6g}), front {stat['front_size']}/"
                 f"{stat['population']}, offspring {stat['offspring']}, repaired {stat['repaired']} "
                 f"({100 * stat['repair_share']:.0f}%), duplicates {stat['duplicates']}, failed "
                 f"{stat['failed']}, {_fmt_time(wall)} (bookkeeping {1000 * stat['bookkeeping_s']:.1f} ms), "
                 f"ETA {_fmt_time(eta)}")
        if self.on_generation is not None:
            self.on_generation(self._result())

    def _per_eval(self) -> float:
        return self.eval_seconds / self.n_evaluated if self.n_evaluated else math.nan

    # -- breeding
    def _make_unique(self, make: Callable[[], tuple[Any, int, str, list[str]]], seen: set[str],
                     batch: set[str]) -> Optional[_Child]:
        """Call ``make`` until its child's key is new (bounded retries); None when the space is spent."""
        for _ in range(self.max_retries + 1):
            ind, n_changed, origin, parents = make()
            text = self.encode(ind)
            ind = self.decode(text)  # the text form is the identity: what a resumed run would see
            k = self.key(ind)
            if k not in seen and k not in batch:
                batch.add(k)
                return _Child(ind, text, k, int(n_changed), origin, parents)
            self.duplicates += 1
        return None

    def _initial_children(self, rng: np.random.Generator, seen: set[str]) -> list[_Child]:
        children, batch = [], set()
        for ind in self.initial:  # e.g. the D15 baselines, evaluated first
            text = self.encode(ind)
            ind = self.decode(text)
            k = self.key(ind)
            if k in batch:
                self.log(f"initial individual {_short(text)} duplicates an earlier one; skipped")
                self.duplicates += 1
                continue
            batch.add(k)
            children.append(_Child(ind, text, k, 0, "initial", []))

        def make():
            ind, n_changed = self.repair(self.sample(rng), rng)
            return ind, n_changed, "sample", []
        for _ in range(max(self.pop_size - len(children), 0)):
            child = self._make_unique(make, seen, batch)
            if child is None:
                self.log(f"gen 0: no new individual after {self.max_retries} retries; smaller population")
                break
            children.append(child)
        return children

    def _offspring(self, rng: np.random.Generator, seen: set[str]) -> list[_Child]:
        ranks, crowd = rank_and_crowding(self.pop_F)

        def make():
            a, b = tournament(ranks, crowd, rng, 2)
            if rng.random() < self.p_crossover:
                child = self.crossover(self.decode(self.pop_text[a]), self.decode(self.pop_text[b]), rng)
                origin, parents = "crossover", [self.pop_key[a], self.pop_key[b]]
            else:
                child = self.decode(self.pop_text[a])  # a fresh copy: parents are never aliased
                origin, parents = "mutation", [self.pop_key[a]]
            if rng.random() < self.p_mutation:
                child = self.mutate(child, rng)
            child, n_changed = self.repair(child, rng)
            return child, n_changed, origin, parents

        children, batch = [], set()
        for _ in range(self.n_offspring):
            child = self._make_unique(make, seen, batch)
            if child is None:
                self.log(f"no new offspring after {self.max_retries} retries; "
                         "fewer offspring this generation")
                break
            children.append(child)
        return children

    # -- evaluation, archived as each result arrives
    def _evaluate(self, g: int, children: list[_Child], pending: list[int],
                  results: list[Optional[list[float]]]) -> float:
        """Evaluate children[pending]; returns the seconds spent inside ``evaluate`` minus the
        seconds its ``report`` calls spent in the loop's own bookkeeping."""
        if not pending:
            return 0.0
        n_total, n_before = len(children), len(children) - len(pending)
        reported = [False] * len(pending)
        t_eval = time.perf_counter()
        clock = {"last": t_eval, "bookkeeping": 0.0}

        def report(i: int, ev: Evaluation) -> None:
            t0 = time.perf_counter()
            if not 0 <= i < len(pending) or reported[i]:
                raise ValueError(f"report({i}): index out of range or reported twice")
            if not isinstance(ev, Evaluation):
                raise TypeError(f"report({i}) needs an Evaluation, got {type(ev).__name__}")
            obj = [float(x) if math.isfinite(float(x)) else math.inf for x in ev.objectives]
            if self.n_obj is None:
                self.n_obj = len(obj)
            if len(obj) != self.n_obj:
                raise ValueError(f"report({i}): {len(obj)} objectives, the run has {self.n_obj}")
            clash = sorted(set(ev.info) & set(RESERVED))
            if clash:
                raise ValueError(f"Evaluation.info may not set the loop's fields {clash}")
            c = children[pending[i]]
            record = {"generation": g, "genome": c.text, "key": c.key,
                      "objectives": _objectives_to_json(obj), "repairs": c.repairs,
                      "origin": c.origin, "parents": c.parents, **_json_safe(ev.info)}
            try:
                line = json.dumps(record, allow_nan=False)
            except TypeError as e:
                raise TypeError(f"Evaluation.info of {c.key} is not JSON-serialisable: {e}") from None
            record = json.loads(line)  # in memory exactly what a resumed run reads back
            if self.archive_fh is not None:
                _append_line(self.archive_fh, line)
            self.records.append(record)
            self.record_of[c.key] = record
            reported[i] = True
            results[pending[i]] = obj
            # progress: what, how far, how long, ETA
            self.n_evaluated += 1
            self.eval_seconds += t0 - clock["last"]
            clock["last"] = t0
            done = n_before + sum(reported)
            left = (n_total - done) + self.n_offspring * (self.generations - g)
            if self.format_info is not None:  # the caller's words for what it measured
                status = " " + self.format_info(record)
            else:
                status = f" {ev.info['status']}" if "status" in ev.info else ""
            self.log(f"gen {g} [{done}/{n_total}] {_short(c.key)} {_fmt_obj(obj)}{status} "
                     f"{_fmt_time(t0 - t_eval)} ETA {_fmt_time(self._per_eval() * left)}")
            clock["bookkeeping"] += time.perf_counter() - t0

        self.evaluate([children[i].individual for i in pending], g, report)
        missing = [children[pending[i]].key for i, r in enumerate(reported) if not r]
        if missing:
            raise RuntimeError(f"evaluate returned without reporting {len(missing)} individuals: "
                               f"{missing[:3]}")
        return time.perf_counter() - t_eval - clock["bookkeeping"]
