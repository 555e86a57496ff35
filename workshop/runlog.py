"""The run's log book: the archive, snapshots, resume, progress lines, and the run folder (workshop tier).

evolve.py's ``nsga2`` has three seams (``evaluate``, ``on_generation``, ``start``); ``search`` here plugs
into them, and adds nothing to the algorithm:

- the **archive** (``archive.jsonl``): every evaluation appended and fsync'ed the moment it is
  reported, one record each (generation, genome, key, objectives with null for inf, repairs, origin,
  parents' keys, then ``Evaluation.info``);
- **snapshots** (``population_{g:03d}.json``): each generation ends with the survivors, the search's
  parameters and the statistics written atomically; ``generations.jsonl`` is a copy of the newest
  snapshot's statistics;
- **resume**: ``load_checkpoint`` checks the whole folder before anything is written, then the
  interrupted generation is replayed (all randomness of generation g comes from
  ``default_rng([seed, g])``), taking finished evaluations from the archive. A killed run loses no
  finished evaluation and repeats none, and ends with the same archive as an uninterrupted run; a
  test aborts it at every write to check this;
- **statistics** and **progress** (the lines a user reads, with ETAs).

Below those, the run folder of star.py: its lock, ``config.json`` (written once, atomically, checked on
``--resume`` by config.py's rule), and the append-only ``baselines.jsonl`` / ``final.jsonl``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

import evolve
from evolve import Child, Generation, Population, Search, State, Variation, clean_objectives, shorten
from workshop import candidate, evaluation, fidelity
from workshop.evaluation import Evaluation, Evaluator, default_ref_point, hypervolume
from workshop.words import fmt_bytes, fmt_time
from workshop.config import RECORDED_LATE, RunConfig, RunFailed, UsageError

# ----------------------------------------------------------------------------------------------------
# The search with its log book
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
        return [self.records[i] for i in evaluation.finite_front(F.reshape(len(self.records), -1))]


# fields the loop writes into every record; an Evaluation.info may not overwrite them
RESERVED = ("generation", "genome", "key", "objectives", "repairs", "origin", "parents")
# fields that legitimately differ between an uninterrupted and a resumed run
TIMING_FIELDS = ("wall_s", "evaluate_s", "bookkeeping_s")


def search(initial: Sequence, var: Variation, evaluate: Evaluator, settings: Search, *,
           run_dir: Optional[str | Path] = None, resume: bool = False,
           ref_point: Optional[Sequence[float]] = None, log: Callable[[str], None] = print,
           on_generation: Optional[Callable[[SearchResult], None]] = None,
           format_info: Optional[Callable[[dict], str]] = None, patience: Optional[int] = None,
           redo: Optional[Callable[[dict], bool]] = None, after_search: float = 0.0) -> SearchResult:
    """evolve.nsga2 with its log book: the archive, the snapshots, resume, statistics and progress.

    ``evaluate(individuals, generation, report)`` is the user's batch evaluator: it must call
    ``report(i, Evaluation)`` for each index as soon as that result is known, and the evaluation is
    archived at once (``evaluation.sequential(fn)`` adapts a one-at-a-time ``fn``). A failed candidate is
    *reported* with inf objectives and its error in ``info`` (D16); an exception out of ``evaluate``
    stops the run, which ``resume`` then continues. A generation 0 in which every candidate fails
    raises ``SearchError``; a later one is reported and the population stays. ``evaluate`` must not
    draw from the loop's generator (seed training from the individual instead).

    ``run_dir`` (None: in memory) receives the files above; ``resume=True`` continues the run found
    there, or raises ``ResumeError``. ``ref_point`` defaults to ``default_ref_point`` of generation 0's
    objectives, fixed for the run. ``on_generation(result)`` runs after each generation's snapshot;
    ``format_info(record) -> str`` words the progress line of each evaluation. ``patience``: end the
    search once the hypervolume of everything evaluated has not grown for that many generations.

    ``after_search``: the trainings that follow the search, in candidate trainings (the selection's weights,
    a longer retraining), which the progress lines' ETA counts.

    ``redo(record)``: a record that is *not final*. When a resume replays a generation that no snapshot
    holds yet, its archived records with ``redo(record)`` true are evaluated again, and the new record is
    appended after the old one, which it supersedes (D23: a candidate stopped by ``--timeout`` is
    evaluated again on a resume with a larger one). The archive stays append-only; ``records`` hold the
    newest record of each key. Only a record whose ``status`` is "timeout" may be superseded.
    """
    book = LogBook(var, evaluate, settings, run_dir=run_dir, resume=resume, ref_point=ref_point, log=log,
                   on_generation=on_generation, format_info=format_info, patience=patience, redo=redo,
                   after_search=after_search)
    with book:
        evolve.nsga2(initial, var, book.evaluate, settings, start=book.start, on_generation=book.after)
    return book.result()


class LogBook:
    """``search``'s log book, as the seams of evolve.nsga2 (and of star.synthesize): ``start`` the state to
    continue from (checked against the run folder, which nothing has touched yet), ``evaluate`` the Scorer
    that archives every evaluation (``evaluate.records``: the archive), ``after`` the per-generation hook
    (snapshot, statistics, progress, patience). A context manager: leaving it closes the archive."""

    def __init__(self, var: Variation, evaluate: Evaluator, settings: Search, *, run_dir=None, resume=False,
                 ref_point=None, log=print, on_generation=None, format_info=None, patience=None, redo=None,
                 after_search: float = 0.0):
        if resume and run_dir is None:
            raise ValueError("resume=True needs a run_dir")
        self.var, self.settings, self.log, self.patience = var, settings, log, patience
        self.on_generation = on_generation
        self.params = {"seed": settings.seed, "pop_size": settings.pop_size, "n_offspring": settings.n_offspring,
                       "p_crossover": var.p_crossover, "p_mutation": var.p_mutation,
                       "algorithm": settings.algorithm}  # a resume must agree with these
        ref = None if ref_point is None else tuple(float(x) for x in ref_point)
        self.run_dir = run_dir = None if run_dir is None else Path(run_dir)
        state = Checkpoint(records=[], population=Population.empty(), stats=[], ref=ref, start=0)
        if run_dir is not None:
            if resume:
                state = load_checkpoint(run_dir, self.params, ref, var)  # checks everything, writes nothing
            elif (run_dir / "archive.jsonl").exists() or list(run_dir.glob("population_*.json")):
                raise FileExistsError(f"{run_dir} already holds a search; pass resume=True "
                                      "or choose another directory")
            run_dir.mkdir(parents=True, exist_ok=True)
            for path, text in state.repairs:
                write_atomic(path, text)
            for note in state.notes:
                log(note)
        self.archive = Archive(None if run_dir is None else run_dir / "archive.jsonl", state.records,
                               n_obj=len(state.ref) if state.ref is not None else state.n_obj)
        self.progress = Progress(log, settings.generations, settings.n_offspring, format_info, after_search)
        self.evaluate = ArchivedEvaluate(self.archive, evaluate, self.progress, redo)
        self.population, self.stats, self.ref, self.done = state.population, state.stats, state.ref, state.start - 1
        self.t_start = time.perf_counter()
        seen = {r["key"] for r in self.archive.records if r["generation"] < state.start}
        last = state.start - 1
        if self._stagnant():  # a resumed run that had already stopped stays stopped: no generation is left
            last = settings.generations
        self.start = State(state.population, seen, last)

    def __enter__(self) -> "LogBook":
        return self

    def __exit__(self, *exc) -> None:
        self.archive.close()

    @property
    def records(self) -> list[dict]:
        return self.archive.records

    def result(self) -> SearchResult:
        pop = self.population
        return SearchResult(population=[self.var.decode(t) for t in pop.texts], objectives=pop.F.copy(),
                            records=self.archive.records, stats=self.stats, ref_point=self.ref,
                            generation=self.done)

    def after(self, step: Generation, now: State) -> None:
        """evolve.nsga2's per-generation seam: the snapshot, the statistics, the progress line."""
        g = now.generation
        for note in step.notes:
            self.log(f"gen {g}: {note}")
        if g == 0:
            _check_generation_zero(step, self.archive)
            self.ref = self.ref if self.ref is not None else default_ref_point(step.F)
            self.log(f"hypervolume reference point, fixed for this run: ({', '.join(f'{x:.6g}' for x in self.ref)})")
        self.population, self.done = now.population, g
        stat = generation_stats(g, step, self.archive, self.ref)
        wall = time.perf_counter() - self.t_start
        stat.update(wall_s=wall, evaluate_s=self.evaluate.evaluate_s, bookkeeping_s=wall - self.evaluate.evaluate_s)
        self.stats.append(stat)
        if self.run_dir is not None:
            save_generation(self.run_dir, g, self.params, self.ref, now.population, self.stats)
        self.progress.generation(g, stat)
        if self.on_generation is not None:
            self.on_generation(self.result())
        if self._stagnant():
            raise evolve.StopSearch
        self.t_start = time.perf_counter()

    def _stagnant(self) -> bool:
        """The patience rule: the hypervolume of everything evaluated has not grown for `patience` generations."""
        stats, patience = self.stats, self.patience
        if patience and stats and stagnant_for(stats) >= patience:
            self.log(f"stopping after generation {stats[-1]['generation']}: the hypervolume of everything evaluated "
                     f"has not grown for {stagnant_for(stats)} generations (--patience {patience})")
            return True
        return False


def generation_stats(g: int, step: Generation, archive: "Archive", ref: tuple[float, ...]) -> dict:
    """The statistics line of one generation (generations.jsonl), timings left to the caller. The
    hypervolume and the front of everything evaluated count the top rung's records only (D38)."""
    pop, children = step.population, step.children
    top = fidelity.top_rung(archive.records)
    archive_F = np.array([_objectives_from_json(r["objectives"]) for r in top], dtype=float)
    archive_F = archive_F.reshape(-1, len(ref))
    front_keys = {top[i]["key"] for i in evaluation.finite_front(archive_F)}
    repaired = sum(c.repairs > 0 for c in children)
    return {"generation": g,
            "hypervolume": hypervolume(pop.F, ref),
            "hypervolume_archive": hypervolume(archive_F, ref),
            "new_front": sum(c.key in front_keys for c in children),  # children on the front of all evaluated
            "front_size": len(evaluation.finite_front(pop.F)),
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
    why = f" (first error: {shorten(first, 160)})" if first else ""
    where = f"every evaluation is recorded in {archive.path}" if archive.path else "nothing was written"
    if all(archive.by_key[c.key].get("status") == "timeout" for c in step.children):
        raise SearchError(f"generation 0: all {n}/{n} candidates timed out{why}; {where}: continue with "
                          "--resume and a larger --timeout, which evaluates them again (nothing else is redone)")
    raise SearchError(f"generation 0: all {n}/{n} candidates failed{why}; {where}, and a resume would "
                      "replay the same failures: fix the cause and start a new run")


# ----------------------------------------------------------------------------------------------------
# The archive: one record per evaluation, appended and fsync'ed the moment it is reported
# ----------------------------------------------------------------------------------------------------


class Archive:
    """Every evaluation of the run, in order (``archive.jsonl``; None: in memory only). ``records`` holds
    the newest record of each key, where the first one was (a record that supersedes a timed-out one,
    ``search``'s ``redo``, takes its place); the file keeps both."""

    def __init__(self, path: Optional[Path], records: list[dict], n_obj: Optional[int]):
        self.path, self.records, self.n_obj = path, records, n_obj
        self.by_key = {r["key"]: r for r in records}
        self._index = {r["key"]: i for i, r in enumerate(records)}
        self.fh = None if path is None else open(path, "a")

    def add(self, g: int, c: Child, objectives: list[float], info: dict) -> dict:
        """Archive one evaluation; returns the record exactly as a resumed run will read it."""
        record = evolve.record(g, c, objectives, json_safe(info))
        try:
            line = json.dumps(record, allow_nan=False)
        except TypeError as e:
            raise TypeError(f"Evaluation.info of {c.key} is not JSON-serialisable: {e}") from None
        record = json.loads(line)
        if self.fh is not None:
            append_line(self.fh, line)
        if c.key in self._index:  # a re-evaluation (redo): it takes the place of the record it supersedes
            self.records[self._index[c.key]] = record
        else:
            self._index[c.key] = len(self.records)
            self.records.append(record)
        self.by_key[c.key] = record
        return record

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class ArchivedEvaluate:
    """The full loop's ``Scorer``: checks a replayed generation against the archive, takes the
    evaluations the archive already holds, and hands the rest to the user's ``Evaluator``, archiving
    each report the moment it arrives. ``evaluate_s``: seconds inside ``evaluate`` in the last call,
    less the loop's own bookkeeping inside ``report``."""

    def __init__(self, archive: Archive, evaluate: Evaluator, progress: "Progress",
                 redo: Optional[Callable[[dict], bool]] = None):
        self.archive, self.evaluate, self.progress = archive, evaluate, progress
        self.redo = redo or (lambda record: False)
        self.evaluate_s = 0.0

    @property
    def records(self) -> list[dict]:
        """The archive: the newest record of each key evaluated, in archive order."""
        return self.archive.records

    def __call__(self, children: list[Child], g: int) -> np.ndarray:
        _check_replay(self.archive, children, g)
        done = self.archive.by_key
        results = [_objectives_from_json(done[c.key]["objectives"])
                   if c.key in done and not (done[c.key].get("status") == "timeout" and self.redo(done[c.key]))
                   else None for c in children]
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
        obj = clean_objectives(ev.objectives)
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


def _check_replay(archive: Archive, children: list[Child], g: int) -> None:
    """On resume, the archive may already hold some of generation g: the replay must breed exactly
    those (same keys, same text, same generation), or the seed, the callables or the code changed."""
    keys = {c.key for c in children}
    orphans = [r["key"] for r in archive.records if r["generation"] == g and r["key"] not in keys]
    if orphans:
        raise ResumeError(f"{archive.path}: holds generation-{g} records the replay did not breed "
                          f"({shorten(orphans[0])}): different seed, callables or code? resume with the "
                          "code and options that made the run, or start a new run")
    for c in children:
        rec = archive.by_key.get(c.key)
        if rec is not None and (rec["genome"] != c.text or rec["generation"] != g):
            raise ResumeError(f"{archive.path}: record {shorten(rec['key'])} (generation {rec['generation']}, "
                              f"{shorten(rec['genome'])}) does not match the replay (generation {g}, "
                              f"{shorten(c.text)}): different seed, callables or code? resume with the "
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
    write_atomic(run_dir / f"population_{g:03d}.json", json.dumps(snapshot, allow_nan=False, indent=1))
    write_jsonl(run_dir / "generations.jsonl", stats)


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
    records, lines, fixed = parse_jsonl(archive_path)
    repairs = [] if fixed is None else [(archive_path, fixed)]
    notes = [] if fixed is None else [f"{archive_path}: dropped a last line cut short by a kill"]
    snap, snap_path, newest, skipped = _newest_snapshot(run_dir)
    notes += skipped
    if snap is not None:
        _check_params(snap, snap_path, params, ref)
        ref = tuple(float(x) for x in snap["ref_point"])
    n_obj = _check_records(archive_path, records, lines, var, None if ref is None else len(ref))
    records, lines = newest_records(records, lines)
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
            stats = [s for s in parse_jsonl(gen_path)[0] if s.get("generation", start) < start]
    text = jsonl_text(stats)
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
            raise ResumeError(f"{path}: member {shorten(m['key'])} does not match {at}: one of the two "
                              "files was edited; restore it from a copy or start a new run")
    members = snap["population"]
    F = np.array([_objectives_from_json(m["objectives"]) for m in members], dtype=float)
    return Population([m["genome"] for m in members], [m["key"] for m in members],
                      F.reshape(len(members), n_obj))


def newest_records(records: list[dict], lines: Optional[list[int]] = None) -> tuple[list[dict], list[int]]:
    """The archive as the search sees it: the newest record of each key, in the place of its first (a
    re-evaluated timeout supersedes the old record; ``search``'s ``redo``), with its line numbers."""
    lines = list(range(1, len(records) + 1)) if lines is None else lines
    index: dict[str, int] = {}
    out, out_lines = [], []
    for r, n in zip(records, lines):
        if r["key"] in index:
            out[index[r["key"]]], out_lines[index[r["key"]]] = r, n
        else:
            index[r["key"]] = len(out)
            out.append(r)
            out_lines.append(n)
    return out, out_lines


def _check_records(path: Path, records: list, lines: list[int], var: Variation,
                   n_obj: Optional[int]) -> Optional[int]:
    """Every archive record well formed, in generation order, with ``n_obj`` objectives (None: as
    many as the first), its key unique and its genome's (a key may repeat only after a timed-out
    record of the same generation: a re-evaluation). Returns the number of objectives."""
    first_line: dict[str, int] = {}
    newest: dict[str, dict] = {}
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
        before = newest.get(r["key"])
        if before is not None and not (before.get("status") == "timeout" and before["generation"] == r["generation"]):
            raise ResumeError(f"{at} repeats the key of line {first_line[r['key']]}: two processes wrote "
                              "to this run; restore the archive from a copy or start a new run")
        try:  # the user's decode may raise anything on edited text
            ind = var.decode(r["genome"])
            ok = var.encode(ind) == r["genome"] and var.key(ind) == r["key"]
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            raise ResumeError(f"{at}: genome {shorten(r['genome'])!r} does not decode to its key "
                              f"{shorten(r['key'])!r} (edited?); restore the line or start a new run")
        first_line.setdefault(r["key"], n)
        newest[r["key"]], last_g = r, r["generation"]
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
    """One line per evaluation and one per generation. The ETA counts every training still to come: the
    evaluations left (this process's mean wall time per evaluation, workers included) and the
    `after_search` trainings that follow the search in the main process, one after another (the mean
    training time of a candidate, as its record measured it)."""

    def __init__(self, log: Callable[[str], None], generations: int, n_offspring: int,
                 format_info: Optional[Callable[[dict], str]], after_search: float = 0.0):
        self.log, self.generations, self.n_offspring, self.format_info = log, generations, n_offspring, format_info
        self.after_search = after_search
        self.n_evaluated, self.eval_seconds = 0, 0.0  # evaluations done by this process, their time
        self.records: list[dict] = []  # what this process evaluated: their training times
        self.t_batch = self.t_last = time.perf_counter()

    def per_eval(self) -> float:
        return self.eval_seconds / self.n_evaluated if self.n_evaluated else math.nan

    def eta(self, evaluations_left: float) -> float:
        per_training = training_seconds(self.records)
        per_training = self.per_eval() if math.isnan(per_training) else per_training
        return self.per_eval() * evaluations_left + (per_training * self.after_search if self.after_search else 0.0)

    def batch_started(self, t: float) -> None:
        self.t_batch = self.t_last = t

    def evaluation(self, g: int, done: int, n_total: int, record: dict, obj: list[float], t: float) -> None:
        self.n_evaluated += 1
        self.eval_seconds += t - self.t_last
        self.t_last = t
        self.records.append(record)
        left = (n_total - done) + self.n_offspring * (self.generations - g)
        if self.format_info is not None:  # the caller's words for what it measured
            status = " " + self.format_info(record)
        else:
            status = f" {record['status']}" if "status" in record else ""
        self.log(f"gen {g} [{done}/{n_total}] {record['key']} {_fmt_obj(obj)}{status} "
                 f"{fmt_time(t - self.t_batch)} ETA {fmt_time(self.eta(left))}")

    def generation(self, g: int, stat: dict) -> None:
        eta = self.eta(self.n_offspring * (self.generations - g))
        all_failed = " (all failed: population unchanged)" if stat["failed"] == stat["offspring"] > 0 else ""
        self.log(f"gen {g}/{self.generations} done: hypervolume {stat['hypervolume']:.6g} "
                 f"(archive {stat['hypervolume_archive']:.6g}), front {stat['front_size']}/"
                 f"{stat['population']}, offspring {stat['offspring']}, repaired {stat['repaired']} "
                 f"({100 * stat['repair_share']:.0f}%), duplicates {stat['duplicates']}, failed "
                 f"{stat['failed']}/{stat['offspring']}{all_failed}, {_new_front_words(stat)}, {fmt_time(stat['wall_s'])} "
                 f"(bookkeeping {1000 * stat['bookkeeping_s']:.1f} ms), ETA {fmt_time(eta)}")


def training_seconds(records: list[dict]) -> float:
    """A candidate's mean training time, as its records measured it (the finished ones); NaN without one."""
    secs = [r["seconds"] for r in records if r.get("status") == "ok" and isinstance(r.get("seconds"), (int, float))]
    return sum(secs) / len(secs) if secs else math.nan


def _new_front_words(stat: dict) -> str:
    n = stat.get("new_front", 0)
    return f"{n} new front member{'s' if n != 1 else ''}" if n else "no new front member"


def stagnant_for(stats: list[dict]) -> int:
    """Generations since the hypervolume of everything evaluated last grew (0: it grew in the last one)."""
    hv = [s["hypervolume_archive"] for s in stats]
    best_at = max(range(len(hv)), key=lambda i: (hv[i], -i)) if hv else 0  # the first generation at the best
    return len(hv) - 1 - best_at


# ----------------------------------------------------------------------------------------------------
# Small helpers: JSON, text, files
# ----------------------------------------------------------------------------------------------------


def _objectives_to_json(obj: Sequence[float]) -> list[Optional[float]]:
    return [float(x) if math.isfinite(x) else None for x in obj]  # strict JSON has no inf: null


def _objectives_from_json(obj: Sequence[Optional[float]]) -> list[float]:
    return [math.inf if x is None else float(x) for x in obj]


def json_safe(x: Any) -> Any:
    """Plain JSON types; non-finite floats become null (strict JSON, readable by any tool)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt_obj(obj: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in obj) + ")"


def append_line(fh, line: str) -> None:
    """Append one line and force it to disk: a kill right after loses nothing."""
    fh.write(line + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def parse_jsonl(path: Path) -> tuple[list, list[int], Optional[str]]:
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


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a torn last line (the process was killed mid-write) is dropped and the
    file rewritten without it. A bad line elsewhere is corruption and raises ResumeError."""
    rows, _, fixed = parse_jsonl(Path(path))
    if fixed is not None:
        write_atomic(Path(path), fixed)
    return rows


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, jsonl_text(rows))


def write_atomic(path: Path, text: str) -> None:
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


# ----------------------------------------------------------------------------------------------------
# The run folder of star.py: config.json, the lock, baselines.jsonl and final.jsonl
# ----------------------------------------------------------------------------------------------------


# metrics that are inf for a failed candidate: written as null (strict JSON has no Infinity), read back as inf
INF_FIELDS = ("perplexity", "val_loss", "train_loss")


# what every line of baselines.jsonl / final.jsonl must hold (field: allowed types; a null metric is a failed
# one); `seed` may be missing from records written before D21 (one baseline seed: the run's)
_NUMBER, _MISSING = (int, float, type(None)), type(None)
RECORD_FIELDS = {"baselines.jsonl": dict(name=str, seed=(int, _MISSING), genome=str, key=str, perplexity=_NUMBER,
                                         params=int, cache_bytes=int, status=str),
                 "final.jsonl": dict(seed=(int, _MISSING), genome=str, key=str, perplexity=_NUMBER, params=int,
                                     cache_bytes=int, status=str)}


def _is_record(r, need: dict) -> bool:
    return isinstance(r, dict) and all(isinstance(r.get(k), t) and not isinstance(r.get(k), bool)
                                       for k, t in need.items())


def check_records(path: Path) -> tuple[list[dict], Optional[str]]:
    """Read baselines.jsonl / final.jsonl and write nothing: (rows, the repaired text or None), every
    line checked to be a record of its file (valid JSON that is no record, `{}` or `[1, 2]`, raises
    ResumeError naming the line, as a bad line does)."""
    rows, lines, fixed = parse_jsonl(Path(path))
    need = RECORD_FIELDS.get(Path(path).name, {})
    for r, n in zip(rows, lines):
        if not _is_record(r, need):
            raise ResumeError(f"{path}: line {n} is not a record of {Path(path).name} (it needs "
                              f"{', '.join(need)}): the file was damaged or edited; restore it from a copy")
    return rows, fixed


def read_records(path: Optional[Path]) -> list[dict]:
    """baselines.jsonl / final.jsonl (None: in memory, nothing yet): `check_records`, then a torn last
    line from a kill is dropped and the file repaired; null metrics back to inf."""
    if path is None:
        return []
    rows, fixed = check_records(Path(path))
    if fixed is not None:
        write_atomic(Path(path), fixed)
    return [_from_json(r) for r in rows]


def _from_json(rec: dict) -> dict:
    return {k: (math.inf if k in INF_FIELDS and v is None else v) for k, v in rec.items()}


def append_record(path: Optional[Path], rec: dict) -> dict:
    """Append one record as a line of strict JSON and force it to disk (None: in memory); returns the
    record as a resumed run will read it back."""
    line = json.dumps(json_safe(rec), allow_nan=False)
    if path is not None:
        with open(path, "a") as fh:
            append_line(fh, line)
    return _from_json(json.loads(line))


RUN_FILES = ("config.json", "archive.jsonl", "baselines.jsonl", "generations.jsonl", "final.jsonl", "rungs.jsonl")


class RungLog(fidelity.Book):
    """A multi-fidelity search's book (D38) in ``rungs.jsonl``: one line per training at a rung
    (``{"generation", "key", "rung", "steps", "objectives", "info"}``) and one per promotion decision
    (``{"generation", "rung", "promoted": [keys]}``), each appended and fsync'ed when it is made. A
    resumed run reads it back (a torn last line dropped), takes the decisions as they were and trains
    nothing twice; a training that timed out is left out, so that a resume trains it again."""

    def __init__(self, path: Optional[Path]):
        super().__init__()
        self.path = path
        rows = read_jsonl(path) if path is not None else []
        for n, r in enumerate(rows, 1):
            try:
                if "promoted" in r:
                    super().add_decision(int(r["generation"]), int(r["rung"]), [str(k) for k in r["promoted"]])
                elif (r.get("info") or {}).get("status") != "timeout":
                    ev = Evaluation(tuple(_objectives_from_json(r["objectives"])), dict(r["info"]))
                    super().add_result(int(r["generation"]), str(r["key"]), int(r["rung"]), int(r["steps"]), ev)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise ResumeError(f"{path}: line {n} is not a rung record: the file was damaged or edited; "
                                  "restore it from a copy") from None

    def _write(self, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                append_line(fh, json.dumps(json_safe(row), allow_nan=False))

    def add_result(self, g: int, key: str, rung: int, steps: int, ev: Evaluation) -> None:
        self._write(dict(generation=g, key=key, rung=rung, steps=steps, objectives=list(ev.objectives), info=ev.info))
        super().add_result(g, key, rung, steps, ev)

    def add_decision(self, g: int, rung: int, keys) -> None:
        self._write(dict(generation=g, rung=rung, promoted=list(keys)))
        super().add_decision(g, rung, keys)


def run_files(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    return [f for f in RUN_FILES if (run_dir / f).exists()] + sorted(p.name for p in run_dir.glob("population_*.json"))


def lock(run_dir: Path):
    """Hold run_dir/lock (flock) for the life of this process: a second star.py on the same run folder is
    refused. The OS drops the lock when the process ends, however it ends (kill -9 included)."""
    path = run_dir / "lock"
    try:
        fh = open(path, "a+")
    except OSError as e:
        raise UsageError(f"--out: cannot write in {run_dir}: {e.strerror}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise UsageError(f"{run_dir} is in use by another star.py process (pid {pid}); wait for it to end, "
                         "or choose another --name") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _read_config(cfg_path: Path) -> str:
    try:
        return cfg_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--resume: cannot read {cfg_path}: {e}") from None


def resumed_config(run_dir: Path, config: RunConfig, given: set[str]) -> RunConfig:
    """The configuration a --resume of `run_dir` runs with (config.py's rule), read without writing or
    locking anything: what the data and widths are checked against before the folder is opened."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        return config  # prepare_run_dir words the refusal
    return config.resumed(RunConfig.from_json(_read_config(cfg_path), f"--resume: {cfg_path}"), given, str(run_dir))


def _check_extents(run_dir: Path, stored: RunConfig, config: RunConfig) -> None:
    """Extents may grow, never shrink below what is done (D23): a --resume asking for fewer generations
    than the archive holds, or a retraining (--final-steps, --final-top) other than final.jsonl's, is
    refused before anything is written. final.jsonl's records are keyed by genome and seed, so its
    step count is the stored configuration's."""
    try:
        gens = [r["generation"] for r in read_records(run_dir / "archive.jsonl")]
        final = read_records(run_dir / "final.jsonl")
    except ValueError:
        return  # a damaged file: RunFolder words that refusal
    where = f"--resume: {run_dir}"
    if gens and config.generations < max(gens):
        raise UsageError(f"{where} holds generations 0-{max(gens)}; --generations {config.generations} would drop "
                         f"some: a run's extents may grow, never shrink (give --generations {max(gens)} or more)")
    retrained = {r["key"] for r in final if not r.get("name")}
    if final and config.final_steps != stored.final_steps:
        raise UsageError(f"{where} holds its retraining for --final-steps {stored.final_steps}; --final-steps "
                         f"{config.final_steps} cannot replace it: retrain for other budgets with `python -m workshop.after "
                         f"retrain {run_dir} --genome top --steps N`")
    if len(retrained) > config.final_top:
        raise UsageError(f"{where} has retrained its top {len(retrained)}; --final-top {config.final_top} would "
                         f"drop some: a run's extents may grow, never shrink (give --final-top {len(retrained)} or more)")


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, given: set[str]) -> tuple[RunConfig, Any, list[str]]:
    """Check the run folder, create it, lock it and write config.json (atomically). Returns the
    configuration to run with (on --resume: config.py's rule applied to the stored one; config.json is
    rewritten when an extent key changed, or in today's format), the lock, and notes for the log (what
    an older config.json did not record, and so was not checked); every refusal comes before anything
    is written."""
    notes = []
    cfg_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out: {run_dir} is a file, not a folder")
    files = run_files(run_dir)
    if resume and not run_dir.is_dir():
        raise UsageError(f"--resume: {run_dir} holds no run (no such folder)")
    if resume and not cfg_path.exists() and files:
        raise UsageError(f"--resume: {run_dir} holds {files[0]} but no config.json, so its options are "
                         "unknown; move the folder away or choose another --name")
    if not resume and cfg_path.exists():
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
    if not resume and files:
        raise UsageError(f"{run_dir} holds {files[0]} but no config.json (an unfinished or foreign run); "
                         "move the folder away or choose another --name")
    stored_text = None
    if resume and cfg_path.exists():  # config.json is written atomically: safe to read unlocked
        stored_text = _read_config(cfg_path)
        stored = RunConfig.from_json(stored_text, f"--resume: {cfg_path}")
        config = config.resumed(stored, given, str(run_dir))
        _check_extents(run_dir, stored, config)
        notes += [f"{cfg_path} records no {k} (an older format): not checked on this resume; recorded now as "
                  f"{getattr(config, k)!r} and checked from now on"
                  for k in RECORDED_LATE if getattr(stored, k) is None and getattr(config, k) is not None]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot create {run_dir}: {e.strerror}") from None
    fh = lock(run_dir)
    try:
        if not cfg_path.exists():  # a fresh run, or one killed before its config.json existed
            if not resume and run_files(run_dir):  # another process got here first
                raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
            write_atomic(cfg_path, config.to_json())
        elif not resume:
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
        elif config.to_json() != stored_text:  # an extent changed, or an older format: written in today's
            write_atomic(cfg_path, config.to_json())
    except BaseException:
        fh.close()
        raise
    return config, fh, notes



def fmt_ppl(x) -> str:
    return "inf" if x is None or not math.isfinite(x) else f"{x:.3f}"


def progress_words(r: dict) -> str:
    """The measured facts of one candidate, for its progress line."""
    words = f"ppl {fmt_ppl(r.get('perplexity'))} params {r.get('params', 0):,} cache {fmt_bytes(r.get('cache_bytes'))} " \
            f"{r.get('seconds', 0):.1f}s {r.get('status', '')}"
    if r.get("rungs"):  # D38: where successive halving stopped it, and what its ladder cost
        words += f" at rung {r['rung']} ({r['rung_steps']} steps; {sum(x.get('seconds') or 0 for x in r['rungs']):.1f}s in all)"
    return words + (f" ({r['error'][:80]})" if r.get("error") else "")


def at_run_rate(records: list[dict], lr: float) -> list[dict]:
    """`records` with their peak rate: one written before D41 holds no `lr`, it trained at the run's one rate."""
    for r in records:
        r.setdefault("lr", lr)
    return records


class RunFolder:
    """A synthesis's run folder with its lock, or memory when ``path`` is None (workshop/run.py's handle).
    The baselines and the retraining are kept one record per (genome, seed), so a resumed run trains none
    twice; the search's seams come from ``log_book`` (``LogBook`` above), with the summary (``write_summary(folder, baselines, result, final)``, report.py's) after every
    generation. A context manager: leaving it releases the lock."""

    def __init__(self, path: Optional[Path], config: RunConfig, resume: bool, lock_fh, log: Callable[[str], None],
                 write_summary: Optional[Callable]):
        self.path, self.config, self.resume, self.log = path, config, resume, log
        self._lock, self._write_summary = lock_fh, write_summary
        self._records, self._after_left = [], 0.0  # the search's records; trainings still to come after it
        try:
            self.done = {(b["name"], b.get("seed", config.seed), b["lr"]): b
                         for b in at_run_rate(read_records(self._file("baselines.jsonl")), config.lr)}
            self.final = {(r["key"], r.get("seed"), r["lr"]): r
                          for r in at_run_rate(read_records(self._file("final.jsonl")), config.lr)}
        except ValueError as e:
            self.close()
            raise UsageError(f"--resume: {e}") from None

    @classmethod
    def open(cls, path: Optional[Path], config: RunConfig, resume: bool = False, given: set[str] = frozenset(),
             log: Callable[[str], None] = print, write_summary: Optional[Callable] = None) -> "RunFolder":
        """Check, create and lock the folder and settle its config.json (every refusal before a write)."""
        if path is None:
            if resume:
                raise UsageError("resume needs a run folder")
            return cls(None, config, False, None, log, None)
        if resume and path.is_dir():  # checked before config.json may be rewritten: a refusal writes nothing
            try:
                for name in RECORD_FIELDS:
                    check_records(path / name)
            except ValueError as e:
                raise UsageError(f"--resume: {e}") from None
        config, fh, notes = prepare_run_dir(path, config, resume, given)
        folder = cls(path, config, resume, fh, log, write_summary)
        for note in notes:
            log(note)
        return folder

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock (the OS does it too when the process dies)
            self._lock = None

    def _file(self, name: str) -> Optional[Path]:
        return None if self.path is None else self.path / name

    def baseline(self, name: str, g, seed: int, lr: float, train_one: Callable) -> dict:
        """The record of baseline `name` trained under `seed` at peak rate `lr`: from baselines.jsonl, or
        trained now."""
        if (name, seed, lr) not in self.done:
            info, _ = train_one(g, seed=seed, lr=lr)
            self.done[(name, seed, lr)] = append_record(self._file("baselines.jsonl"), dict(
                name=name, seed=seed, genome=str(g), key=self.config.variation().key(g), **{**info, "lr": lr}))
            self.log(f"baseline {name:<14} seed {seed} lr {lr:.3g} {progress_words(self.done[(name, seed, lr)])}")
        return self.done[(name, seed, lr)]

    def retrain(self, job: dict, seed: int, lr: float, train_one: Callable) -> dict:
        """The record of `job` (a genome of the selection, or a baseline) retrained for final_steps at peak
        rate `lr`; with `weights`, its weights are kept too (D24)."""
        if (job["key"], seed, lr) not in self.final:
            g = self.config.variation().decode(job["genome"])
            name = self._final_name(job.get('name') or candidate.weights_name(job['key']), seed, lr)
            info, _ = train_one(g, steps=self.config.final_steps, seed=seed, lr=lr,
                                keep=self._keeper(name, g, kind="final", seed=seed, steps=self.config.final_steps))
            rec = self.final[(job["key"], seed, lr)] = append_record(self._file("final.jsonl"), dict(job, seed=seed, **{**info, "lr": lr}))
            self.log(f"retrained {job.get('name') or job['key']} seed {seed} lr {lr:.3g} for {self.config.final_steps} "
                     f"steps: ppl {fmt_ppl(rec['perplexity'])}" + self._eta_after(self.config.final_steps / self.config.steps))
        return self.final[(job["key"], seed, lr)]

    def _final_name(self, name: str, seed: int, lr: float) -> str:
        """The weights folder of a --final-steps retraining (at the run's own rate: no rate in the name)."""
        return f"{name}-final{self.config.final_steps}-seed{seed}" + ("" if lr == self.config.lr else f"-lr{lr:.3g}")

    def halving(self, evaluate: Evaluator, var: Variation, at_top=()) -> tuple[Evaluator, Variation]:
        """D38: with --rungs, the evaluator that trains each generation by successive halving (its book in
        rungs.jsonl; `at_top`: keys scored at the top rung already) and the variation whose constraint
        violation ranks a lower rung behind; without --rungs, both as given."""
        rungs = self.config.multi_fidelity
        if rungs is None:
            return evaluate, var
        try:
            book = RungLog(self._file("rungs.jsonl"))
        except ResumeError as e:
            raise UsageError(f"--resume: {e}") from None
        mf = fidelity.MultiFidelity(evaluate, rungs, var.key, book=book, at_top=at_top, budget=var.violation,
                                    log=self.log)
        return mf, dataclasses.replace(var, violation=mf.violation())

    def log_book(self, var: Variation, evaluate: Evaluator, settings: Search,
                 on_generation: Optional[Callable[[SearchResult], None]] = None) -> LogBook:
        """The search's log book in this folder (runlog.LogBook), checked before anything is written."""
        self._after_left = self.trainings_after_search()
        with self.words():
            book = LogBook(var, evaluate, settings, run_dir=self.path, resume=self.resume, log=self.log,
                           on_generation=on_generation, format_info=progress_words, patience=self.config.patience,
                           redo=self._timed_out_shorter, after_search=self._after_left)
        self._records = book.records
        return book

    @contextlib.contextmanager
    def words(self):
        """The search's errors as the command line words them: a search that cannot go on is RunFailed
        (exit 1), a stored run that does not fit its replay is UsageError."""
        try:
            yield
        except SearchError as e:
            where = f"; what was evaluated is in {self.path}" if self.path else ""
            raise RunFailed(f"{e}{where}") from None
        except (ValueError, RuntimeError) as e:
            if not self.resume:
                raise
            raise UsageError(f"--resume: {e}") from None

    def trainings_after_search(self) -> float:
        """What follows the search, in candidate trainings (the ETA counts it): the --final-steps retraining
        of the selection and the baselines under every training seed, then the selection's weights (D24),
        at most final_top genomes each; less what a resumed run has done."""
        c = self.config
        n = float(c.final_top) if self.path is not None and c.weights else 0.0
        if c.final_steps:
            n_baselines = len({key[0] for key in self.done}) or 2
            jobs = (c.final_top + n_baselines) * len(c.training_seeds()) * len(c.final_lrs) - len(self.final)
            n += max(jobs, 0) * c.final_steps / c.steps
        return n

    def _eta_after(self, units_done: float) -> str:
        """' ETA ...' of the trainings left after this one: at the search's mean training time."""
        self._after_left = max(self._after_left - units_done, 0.0)
        return f" ETA {fmt_time(training_seconds(self._records) * self._after_left)}"  # '?' before any training

    def _timed_out_shorter(self, record: dict) -> bool:
        """A timed-out candidate is evaluated again by a resume that gives it more time (D23): its record
        says the --timeout it ran under (older records: their error message)."""
        limit = record.get("timeout")
        if limit is None:
            m = re.search(r"--timeout ([0-9.e+-]+) s", str(record.get("error", "")))
            limit = float(m.group(1)) if m else 0.0
        return self.config.timeout is None or self.config.timeout > limit

    def summary(self, baselines: list[dict], result: SearchResult, final: list[dict]) -> None:
        if self._write_summary is not None and self.path is not None:
            self._write_summary(self, baselines, result, final)

    # --- the weights a run keeps (D24) ---

    def _keeper(self, name: str, g, archived: Optional[float] = None, **extra) -> Optional[Callable]:
        """What candidate.evaluate_genome calls with a trained model: save it in weights/<name>/, with
        whether it reproduced the `archived` perplexity exactly."""
        if self.path is None or not self.config.weights:
            return None

        def keep(model, state, info, tcfg):
            checked = {} if archived is None else dict(archived_perplexity=archived, reproduced=info["perplexity"] == archived)
            candidate.save_weights(self.path / "weights" / name, model, state, info, g, model.cfg, tcfg, self.config,
                                   **extra, **checked)
        return keep

    def keep_weights(self, top: list[dict], train_one: Callable, final: list[dict]) -> list[dict]:
        """D24: the selected top-k retrained with the search's own seed and budget (training is
        deterministic, so each must reproduce its archived perplexity exactly: checked and recorded),
        saved in weights/<name>/, and weights/top.json listing them by rank with the --final-steps
        retrainings. A folder already complete is kept, so a resumed run retrains none twice."""
        if self.path is None or not self.config.weights:
            return []
        rows, weights = [], self.path / "weights"
        self._after_left = float(sum(candidate.read_weights(weights / candidate.weights_name(r["key"])) is None for r in top))
        for rank, r in enumerate(top, 1):
            name = candidate.weights_name(r["key"])
            if candidate.read_weights(weights / name) is None:
                g = self.config.variation().decode(r["genome"])
                info, _ = train_one(g, lr=r.get("lr"), keep=self._keeper(name, g, r["perplexity"], kind="search",
                                                                     seed=self.config.seed, generation=r["generation"]))
                same = info["perplexity"] == r["perplexity"]
                self.log(f"weights top{rank} {r['key']}: ppl {fmt_ppl(info['perplexity'])}, " + (
                    "the archived perplexity exactly" if same else f"NOT the archived {fmt_ppl(r['perplexity'])}")
                    + (f" -> {weights / name}" if info["status"] == "ok" else f"; {info['status']}, no weights")
                    + self._eta_after(1))
            about = candidate.read_weights(weights / name)
            finals = [f"weights/{n}" for f in final if f["key"] == r["key"]
                      for n in [self._final_name(name, f["seed"], f["lr"])] if candidate.read_weights(weights / n)]
            if about is not None:
                rows.append(dict(rank=rank, genome=r["key"], key=r["key"], perplexity=r["perplexity"],
                                 params=r.get("params"), cache_bytes=r.get("cache_bytes"), folder=f"weights/{name}",
                                 reproduced=about.get("reproduced"), final=finals))
        if rows:
            weights.mkdir(exist_ok=True)
            write_atomic(weights / "top.json", json.dumps(json_safe(rows), indent=2) + "\n")
        return rows
