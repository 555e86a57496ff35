"""Tests for runlog.py: evolve.nsga2 with its log book on a toy problem with a known front (reaches
it, same seed = same run, the in-memory loop = the archived one, killed + resumed = uninterrupted,
damaged folders repaired or refused)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import evolve
from evolve import Search, Variation, non_dominated_sort
from workshop import evaluation, runlog
from workshop.evaluation import Evaluation, hypervolume, sequential
from workshop.runlog import TIMING_FIELDS, ResumeError, SearchError

VARIATION = ("sample", "crossover", "mutate", "repair", "encode", "decode", "key", "p_crossover", "p_mutation",
             "max_retries")
SEARCH = ("pop_size", "n_offspring", "generations", "seed", "algorithm")


def nsga2(*, initial, evaluate, **kw):
    """runlog.search with the toy problem's flat keywords split into a Variation and a Search."""
    var = Variation(**{k: kw.pop(k) for k in VARIATION if k in kw})
    settings = Search(**{k: kw.pop(k) for k in SEARCH if k in kw})
    return runlog.search(initial, var, evaluate, settings, **kw)


# ----------------------------------------------------------------------------------------------------
# The search loop on a small integer bi-objective problem with a known Pareto front
# ----------------------------------------------------------------------------------------------------
# Individuals are tuples of D integers in 0..R-1. f1 = x0, f2 = (R-1-x0) + sum(x1..): the Pareto
# front is x1 = ... = 0 with any x0, i.e. the R points (k, R-1-k).

R, D = 10, 4


def objectives(x):
    return (float(x[0]), float(R - 1 - x[0] + sum(x[1:])))


def problem(**over):
    """Keyword arguments for nsga2 on the toy problem; a test overrides what it needs."""
    calls = []

    def evaluate_one(x, generation):
        calls.append(x)
        return Evaluation(objectives(x), {"status": "ok", "sum": sum(x)})

    def mutate(x, rng):  # steps of -2..2 that repair must clip back into range
        return tuple(int(v + rng.integers(-2, 3)) if rng.random() < 0.3 else v for v in x)

    def repair(x, rng):
        fixed = tuple(min(max(v, 0), R - 1) for v in x)
        return fixed, sum(a != b for a, b in zip(x, fixed))

    kw = dict(initial=[(R - 1,) * D], sample=lambda rng: tuple(int(v) for v in rng.integers(0, R, D)),
              evaluate=sequential(evaluate_one),
              crossover=lambda a, b, rng: tuple(u if rng.random() < 0.5 else v for u, v in zip(a, b)),
              mutate=mutate, repair=repair, encode=lambda x: ".".join(map(str, x)),
              decode=lambda s: tuple(int(v) for v in s.split(".")), key=lambda x: ".".join(map(str, x)),
              pop_size=12, n_offspring=12, generations=12, seed=3, log=lambda s: None)
    kw.update(over)
    return kw, calls


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def run_files(d):
    """archive.jsonl, generations.jsonl and the snapshots (which carry the statistics), untimed."""
    snaps = {p.name: json.loads(p.read_text()) for p in sorted(d.glob("population_*.json"))}
    for snap in snaps.values():
        snap["stats"] = untimed(snap["stats"])
    return read_jsonl(d / "archive.jsonl"), untimed(read_jsonl(d / "generations.jsonl")), snaps


def test_loop_reaches_the_known_pareto_front():
    kw, calls = problem(generations=25)
    res = nsga2(**kw)
    front = {tuple(p) for p in res.objectives[non_dominated_sort(res.objectives)[0]].tolist()}
    assert front == {(float(k), float(R - 1 - k)) for k in range(R)}
    # no key evaluated twice, every evaluation archived, the archive front is the true front too
    keys = [r["key"] for r in res.records]
    assert len(keys) == len(set(keys)) == len(calls)
    assert {tuple(r["objectives"]) for r in res.pareto_records()} == front
    hv = [s["hypervolume_archive"] for s in res.stats]
    assert all(b >= a for a, b in zip(hv, hv[1:]))  # the archive's hypervolume never falls
    assert hv[-1] == pytest.approx(hypervolume(list(front), res.ref_point))
    assert any(s["repaired"] > 0 for s in res.stats)  # mutation steps out of range: repair counted
    assert sum(r["repairs"] > 0 for r in res.records) == sum(s["repaired"] for s in res.stats)


def test_same_seed_same_run_other_seed_other_run():
    a = nsga2(**problem()[0])
    b = nsga2(**problem()[0])
    c = nsga2(**problem(seed=4)[0])
    assert a.records == b.records and untimed(a.stats) == untimed(b.stats)
    assert a.population == b.population and np.array_equal(a.objectives, b.objectives)
    assert [r["key"] for r in a.records] != [r["key"] for r in c.records]


def test_records_and_files(tmp_path):
    kw, _ = problem(generations=2, run_dir=tmp_path / "run")
    res = nsga2(**kw)
    archive, stats, snaps = run_files(tmp_path / "run")
    assert archive == res.records and len(archive) == 12 * 3
    first = archive[0]
    assert first["generation"] == 0 and first["origin"] == "initial" and first["genome"] == "9.9.9.9"
    assert first["objectives"] == list(objectives((9, 9, 9, 9))) and first["status"] == "ok"
    assert set(first) == {"generation", "genome", "key", "objectives", "repairs", "origin", "parents",
                          "status", "sum"}
    assert all(len(r["parents"]) in (1, 2) for r in archive if r["generation"] > 0)
    assert [s["generation"] for s in stats] == [0, 1, 2] == [s["generation"] for s in snaps.values()]
    assert list(snaps) == ["population_000.json", "population_001.json", "population_002.json"]
    last = snaps["population_002.json"]
    assert [m["genome"] for m in last["population"]] == [".".join(map(str, x)) for x in res.population]
    assert last["ref_point"] == list(res.ref_point) and last["seed"] == 3
    assert all(k in res.stats[0] for k in ("hypervolume", "front_size", "duplicates", "repair_share",
                                           "wall_s", "bookkeeping_s"))
    with pytest.raises(FileExistsError):  # never clobber a run
        nsga2(**kw)
    # resuming a finished run evaluates nothing and returns the same state
    kw2, calls = problem(generations=2, run_dir=tmp_path / "run", resume=True)
    again = nsga2(**kw2)
    assert calls == [] and again.records == res.records and again.population == res.population


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [0, 3])
def test_killed_after_a_generation_resumes_to_the_same_archive(tmp_path, kill_after):
    kw, _ = problem(run_dir=tmp_path / "whole", generations=6)
    nsga2(**kw)

    def die(state):
        if state.generation == kill_after:
            raise Killed

    kw, first = problem(run_dir=tmp_path / "killed", generations=6, on_generation=die)
    with pytest.raises(Killed):
        nsga2(**kw)
    kw, second = problem(run_dir=tmp_path / "killed", generations=6, resume=True)
    nsga2(**kw)
    assert run_files(tmp_path / "killed") == run_files(tmp_path / "whole")
    assert len(first) + len(second) == len(read_jsonl(tmp_path / "whole" / "archive.jsonl"))


# killed during generation 0; after generation 1's last report but before its snapshot; in the
# middle of generation 2 (12 evaluations per generation)
@pytest.mark.parametrize("kill_at", [5, 24, 30])
def test_killed_mid_generation_repeats_no_evaluation(tmp_path, kill_at):
    kw, _ = problem(run_dir=tmp_path / "whole", generations=4)
    whole = nsga2(**kw)
    evaluated = []

    def evaluate(inds, generation, report):
        for i, x in enumerate(inds):
            if len(evaluated) == kill_at:
                raise Killed  # the process dies in the middle of evaluating x
            evaluated.append(x)
            report(i, Evaluation(objectives(x), {"status": "ok", "sum": sum(x)}))
        if len(evaluated) == kill_at:
            raise Killed  # all reported, but the generation's snapshot is never written

    kw, _ = problem(run_dir=tmp_path / "killed", generations=4, evaluate=evaluate)
    with pytest.raises(Killed):
        nsga2(**kw)
    assert len(read_jsonl(tmp_path / "killed" / "archive.jsonl")) == kill_at  # nothing lost
    kill_at = -1  # the resumed process is not killed
    kw, _ = problem(run_dir=tmp_path / "killed", generations=4, evaluate=evaluate, resume=True)
    resumed = nsga2(**kw)
    assert len(evaluated) == len(set(evaluated)) == len(whole.records)  # none repeated
    assert run_files(tmp_path / "killed") == run_files(tmp_path / "whole")
    assert resumed.population == whole.population


def test_resume_drops_a_torn_last_line_and_extends_a_run(tmp_path):
    kw, _ = problem(run_dir=tmp_path / "whole", generations=5)
    nsga2(**kw)
    kw, _ = problem(run_dir=tmp_path / "r", generations=3)
    nsga2(**kw)
    with open(tmp_path / "r" / "archive.jsonl", "a") as fh:
        fh.write('{"generation": 4, "genome": "1.2')  # killed while writing a record
    kw, calls = problem(run_dir=tmp_path / "r", generations=5, resume=True)  # two more generations
    nsga2(**kw)
    assert len(calls) == 24
    assert run_files(tmp_path / "r") == run_files(tmp_path / "whole")


def test_resume_refuses_other_parameters(tmp_path):
    kw, _ = problem(run_dir=tmp_path / "r", generations=1)
    nsga2(**kw)
    with pytest.raises(ValueError, match="seed"):
        nsga2(**problem(run_dir=tmp_path / "r", generations=2, resume=True, seed=99)[0])
    with pytest.raises(ValueError, match="ref_point"):
        nsga2(**problem(run_dir=tmp_path / "r", generations=2, resume=True, ref_point=(1.0, 2.0))[0])
    # killed mid-generation, resumed with other variation code: the replay cannot match the archive
    def stop(inds, generation, report):
        report(0, Evaluation(objectives(inds[0]), {"status": "ok"}))
        raise Killed

    with pytest.raises(Killed):
        nsga2(**problem(run_dir=tmp_path / "r", generations=2, resume=True, evaluate=stop)[0])
    assert read_jsonl(tmp_path / "r" / "archive.jsonl")[-1]["generation"] == 2
    with pytest.raises(ResumeError, match="replay"):
        nsga2(**problem(run_dir=tmp_path / "r", generations=2, resume=True,
                        mutate=lambda x, rng: tuple(int(v) for v in rng.integers(0, R, D)))[0])


def test_failed_candidates_rank_last_and_are_recorded(tmp_path):
    def evaluate_one(x, generation):
        if x[1] == 9:  # this "training" diverges
            return Evaluation((math.nan, math.inf), {"status": "diverged", "error": "loss is nan"})
        return Evaluation(objectives(x), {"status": "ok"})

    kw, _ = problem(run_dir=tmp_path / "r", generations=3, evaluate=sequential(evaluate_one))
    res = nsga2(**kw)
    failed = [r for r in res.records if r["status"] == "diverged"]
    assert failed and all(r["objectives"] == [None, None] and r["error"] for r in failed)
    assert np.isfinite(res.objectives).all()  # elitism drops them once enough finite ones exist
    assert res.stats[0]["failed"] >= 1
    assert read_jsonl(tmp_path / "r" / "archive.jsonl") == res.records  # strict JSON: null, not NaN


def test_evaluator_contract_is_checked():
    def lazy(inds, generation, report):
        report(0, Evaluation(objectives(inds[0])))  # forgets the others

    with pytest.raises(RuntimeError, match="without reporting"):
        nsga2(**problem(evaluate=lazy)[0])
    with pytest.raises(ValueError, match="loop's fields"):
        nsga2(**problem(evaluate=sequential(lambda x, g: Evaluation(objectives(x), {"key": 1})))[0])
    with pytest.raises(ValueError, match="objectives"):
        nsga2(**problem(evaluate=sequential(lambda x, g: Evaluation(objectives(x)[: 1 + x[0] % 2])))[0])


def test_progress_lines():
    lines = []
    nsga2(**problem(generations=1, log=lines.append)[0])
    per_eval = [s for s in lines if "[" in s and "ETA" in s]
    per_gen = [s for s in lines if "done: hypervolume" in s]
    assert len(per_eval) == 24 and per_eval[0].startswith("gen 0 [1/12] 9.9.9.9 (9, 27) ok")
    assert len(per_gen) == 2 and "front" in per_gen[0] and "duplicates" in per_gen[0]


# ----------------------------------------------------------------------------------------------------
# The in-memory core, the random-search control, failed generations
# ----------------------------------------------------------------------------------------------------


def variation_of(kw):
    return Variation(kw["sample"], kw["crossover"], kw["mutate"], kw["repair"], kw["encode"], kw["decode"],
                     kw["key"])


@pytest.mark.parametrize("algorithm", ["nsga2", "random"])
def test_the_bare_loop_equals_the_loop_with_its_log_book(tmp_path, algorithm):
    """evolve.nsga2 alone (in memory, no archive) breeds, evaluates and keeps exactly what
    runlog.search archives and snapshots."""
    kw, _ = problem(run_dir=tmp_path / "run", generations=5, algorithm=algorithm)
    full = nsga2(**kw)
    history = []
    last = evolve.nsga2(kw["initial"], variation_of(kw), evaluation.in_memory(kw["evaluate"]),
                        Search(pop_size=12, n_offspring=12, generations=5, seed=kw["seed"], algorithm=algorithm),
                        on_generation=lambda step, state: history.append(step))
    in_memory = [(g, c.text, f) for g, step in enumerate(history)
                 for c, f in zip(step.children, step.F.tolist())]
    archive, _, snaps = run_files(tmp_path / "run")
    assert in_memory == [(r["generation"], r["genome"], r["objectives"]) for r in archive]
    for g, step in enumerate(history):  # the same survivors after every generation
        snap = snaps[f"population_{g:03d}.json"]
        assert [m["genome"] for m in snap["population"]] == step.population.texts
        assert [m["objectives"] for m in snap["population"]] == step.population.F.tolist()
    assert last.generation == 5 and last.population.texts == [kw["encode"](x) for x in full.population]
    assert last.seen == {r["key"] for r in archive}
    assert np.array_equal(history[-1].population.F, full.objectives)
    assert [step.duplicates for step in history] == [s["duplicates"] for s in full.stats]
    in_memory_full = nsga2(**problem(generations=5, algorithm=algorithm)[0])  # no run_dir
    assert in_memory_full.records == full.records and in_memory_full.population == full.population


def test_random_search_control(tmp_path):
    ga = nsga2(**problem(run_dir=tmp_path / "ga", generations=3)[0])
    rs = nsga2(**problem(run_dir=tmp_path / "rs", generations=3, algorithm="random")[0])
    gen0 = lambda res: [r for r in res.records if r["generation"] == 0]
    assert gen0(rs) == gen0(ga) and len(gen0(rs)) == 12  # generation 0 is the same for both
    population_0 = lambda d: json.loads((d / "population_000.json").read_text())["population"]
    assert population_0(tmp_path / "rs") == population_0(tmp_path / "ga")
    later = [r for r in rs.records if r["generation"] > 0]
    assert len(later) == 36 and all(r["origin"] == "sample" and r["parents"] == [] for r in later)
    assert {r["origin"] for r in ga.records if r["generation"] > 0} <= {"crossover", "mutation"}
    assert len({r["key"] for r in rs.records}) == len(rs.records)  # deduplicated the same way
    assert [s["generation"] for s in rs.stats] == [0, 1, 2, 3]
    hv = [s["hypervolume"] for s in rs.stats]
    assert all(b >= a for a, b in zip(hv, hv[1:])) and hv[-1] > 0  # survival applies: elitist
    assert json.loads((tmp_path / "rs" / "population_003.json").read_text())["algorithm"] == "random"
    # a resume with the other algorithm is refused; one with the same one continues
    with pytest.raises(ResumeError, match="algorithm='random'"):
        nsga2(**problem(run_dir=tmp_path / "rs", generations=4, resume=True)[0])
    with pytest.raises(ValueError, match="algorithm"):
        nsga2(**problem(algorithm="grid")[0])

    def die(state):
        if state.generation == 1:
            raise Killed
    with pytest.raises(Killed):
        nsga2(**problem(run_dir=tmp_path / "k", generations=3, algorithm="random", on_generation=die)[0])
    nsga2(**problem(run_dir=tmp_path / "k", generations=3, algorithm="random", resume=True)[0])
    assert run_files(tmp_path / "k") == run_files(tmp_path / "rs")


def test_generation_zero_all_failed_is_one_clear_error(tmp_path):
    def fail(x, generation):
        return Evaluation((math.inf, math.nan), {"status": "oom", "error": "CUDA out of memory\nTraceback..."})

    kw, _ = problem(run_dir=tmp_path / "r", evaluate=sequential(fail))
    with pytest.raises(SearchError) as e:
        nsga2(**kw)
    msg = str(e.value)
    assert "\n" not in msg and "12/12" in msg and "CUDA out of memory" in msg and "archive.jsonl" in msg
    archive = (tmp_path / "r" / "archive.jsonl").read_text()
    assert len(archive.splitlines()) == 12 and not list((tmp_path / "r").glob("population_*"))
    kw, calls = problem(run_dir=tmp_path / "r", resume=True)  # the resume replays, evaluates nothing
    with pytest.raises(SearchError, match="12/12"):
        nsga2(**kw)
    assert calls == [] and (tmp_path / "r" / "archive.jsonl").read_text() == archive


def test_timed_out_records_are_evaluated_again_by_a_resume_that_redoes_them(tmp_path):
    """D23 (issue 20 item 8): generation 0 all timed out stops the run with a line that says how to go on;
    a resume whose `redo` says the timeouts are not final evaluates them again, appends the new records
    after the old (append-only), and ends where an uninterrupted run ends; a later resume is plain."""
    def timed_out(x, generation):
        return Evaluation((math.inf, math.inf), {"status": "timeout", "error": "stopped after --timeout 0.001 s",
                                                 "timeout": 0.001})

    kw, _ = small(run_dir=tmp_path / "r", evaluate=sequential(timed_out))
    with pytest.raises(SearchError, match="timed out.*--resume and a larger --timeout") as e:
        nsga2(**kw)
    assert "\n" not in str(e.value)
    first = (tmp_path / "r" / "archive.jsonl").read_text()
    assert len(first.splitlines()) == 4
    with pytest.raises(SearchError, match="timed out"):  # the same timeout: the records are final
        nsga2(**small(run_dir=tmp_path / "r", resume=True, redo=lambda r: r["timeout"] > 0.001)[0])
    kw, calls = small(run_dir=tmp_path / "r", resume=True, redo=lambda r: r["timeout"] < 10)
    res = nsga2(**kw)
    assert len(calls) == 4 + 4 + 4  # generation 0 again, then generations 1 and 2
    lines = read_jsonl(tmp_path / "r" / "archive.jsonl")
    assert (tmp_path / "r" / "archive.jsonl").read_text().startswith(first) and len(lines) == 4 + 12
    assert [r["key"] for r in lines[:4]] == [r["key"] for r in lines[4:8]]  # superseded, not rewritten
    whole_records = whole_run(tmp_path / "whole", generations=2).records
    assert res.records == whole_records and all(r["status"] == "ok" for r in res.records)
    assert run_files(tmp_path / "r")[1:] == run_files(tmp_path / "whole")[1:]  # statistics and snapshots
    kw, calls = small(run_dir=tmp_path / "r", resume=True, generations=3, redo=lambda r: True)
    assert nsga2(**kw).records[:12] == whole_records and len(calls) == 4  # only generation 3 is new


def test_only_a_timed_out_record_may_be_superseded(tmp_path):
    d = tmp_path / "r"
    whole_run(d, generations=1)
    lines = (d / "archive.jsonl").read_text().splitlines(keepends=True)
    (d / "population_001.json").unlink()  # generation 1 is replayed
    (d / "archive.jsonl").write_text("".join(lines + [lines[-1]]))  # an ok record repeated: two writers
    with pytest.raises(ResumeError, match="repeats the key"):
        nsga2(**small(run_dir=d, resume=True, generations=1)[0])


def test_later_generation_all_failed_keeps_the_population():
    def evaluate_one(x, generation):
        if generation == 2:
            return Evaluation((math.inf, math.inf), {"status": "oom", "error": "out of memory"})
        return Evaluation(objectives(x), {"status": "ok"})

    lines, populations = [], []
    res = nsga2(**problem(generations=3, evaluate=sequential(evaluate_one), log=lines.append,
                          on_generation=lambda s: populations.append(s.population))[0])
    assert res.stats[2]["failed"] == res.stats[2]["offspring"] == 12 and res.stats[3]["failed"] == 0
    assert populations[2] == populations[1]  # every child failed: survival keeps the old population
    assert any(s.startswith("gen 2/3 done") and "failed 12/12 (all failed" in s for s in lines)


# ----------------------------------------------------------------------------------------------------
# Every kill point resumes; damaged run folders are repaired or refused, never half-rewritten
# ----------------------------------------------------------------------------------------------------


def small(**over):
    """The toy problem at 4 + 4 x 2 generations: 12 evaluations."""
    return problem(**{"pop_size": 4, "n_offspring": 4, "generations": 2, **over})


def kill_at(monkeypatch, helper, n, mode):
    """Make the write helper ``helper`` abort at its n-th call (0-based), leaving what ``mode`` says:
    "torn" half of the line or of the temporary file, "unrenamed" the whole temporary file, "after"
    the whole write done."""
    real, calls = getattr(runlog, helper), []

    def fake(*args):
        calls.append(1)
        if len(calls) - 1 != n:
            return real(*args)
        if mode == "after":
            real(*args)
        elif helper == "append_line":
            fh, line = args
            fh.write(line[: len(line) // 2])
            fh.flush()
        else:
            path, text = Path(args[0]), args[1]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text if mode == "unrenamed" else text[: len(text) // 2])
        raise Killed
    monkeypatch.setattr(runlog, helper, fake)
    return calls


def test_every_kill_point_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog.os, "fsync", lambda fd: None)  # speed only: nothing here crashes the OS
    with monkeypatch.context() as m:
        appends = kill_at(m, "append_line", -1, "after")
        writes = kill_at(m, "write_atomic", -1, "after")
        whole = nsga2(**small(run_dir=tmp_path / "whole")[0])
    assert len(appends) == 12 and len(writes) == 6  # 12 evaluations; a snapshot + generations.jsonl x 3
    cases = [("append_line", n, mode) for n in range(12) for mode in ("torn", "after")]
    cases += [("write_atomic", n, mode) for n in range(6) for mode in ("torn", "unrenamed", "after")]
    for helper, n, mode in cases:
        d = tmp_path / f"{helper}-{n}-{mode}"
        with monkeypatch.context() as m:
            kill_at(m, helper, n, mode)
            with pytest.raises(Killed):
                nsga2(**small(run_dir=d)[0])
        resumed = nsga2(**small(run_dir=d, resume=True)[0])
        assert run_files(d) == run_files(tmp_path / "whole"), (helper, n, mode)
        assert resumed.population == whole.population


def whole_run(d, generations=3):
    return nsga2(**small(run_dir=d, generations=generations)[0])


def folder_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def edit_line(path, n, change):
    lines = path.read_text().splitlines(keepends=True)
    lines[n - 1] = change(lines[n - 1])
    path.write_text("".join(lines))


def test_unreadable_newest_snapshot_and_generations_file_are_rebuilt(tmp_path):
    whole_run(tmp_path / "whole")
    whole_run(tmp_path / "r", generations=2)  # then: the newest snapshot cut short, stats line garbled
    snap = tmp_path / "r" / "population_002.json"
    snap.write_text(snap.read_text()[:100])
    edit_line(tmp_path / "r" / "generations.jsonl", 2, lambda s: "{garbage\n")
    lines = []
    nsga2(**small(run_dir=tmp_path / "r", generations=3, resume=True, log=lines.append)[0])
    assert run_files(tmp_path / "r") == run_files(tmp_path / "whole")
    assert any("population_002.json: unreadable; replaying generation 2" in s for s in lines)


def damage_archive_middle(d):
    edit_line(d / "archive.jsonl", 5, lambda s: s[:20] + "\n")
    with open(d / "archive.jsonl", "a") as fh:
        fh.write('{"generation": 4, "gen')  # a torn last line too: it must not be repaired first


def damage_edit_genome(d):
    edit_line(d / "archive.jsonl", 3, lambda s: s.replace('"genome": "', '"genome": "1', 1))


def damage_member_objectives(d):
    member = json.loads((d / "population_003.json").read_text())["population"][0]["key"]
    n = next(i + 1 for i, r in enumerate(read_jsonl(d / "archive.jsonl")) if r["key"] == member)
    edit_line(d / "archive.jsonl", n, lambda s: json.dumps({**json.loads(s), "objectives": [0.5, 0.5]}) + "\n")


def damage_duplicate_key(d):
    with open(d / "archive.jsonl", "a") as fh:
        fh.write((d / "archive.jsonl").read_text().splitlines()[-1] + "\n")  # a second writer


def damage_delete_snapshots(d):
    for p in d.glob("population_*.json"):
        p.unlink()


def damage_two_snapshots(d):
    for g in (2, 3):
        p = d / f"population_{g:03d}.json"
        p.write_text(p.read_text()[:-30])


@pytest.mark.parametrize("damage, names", [
    (damage_archive_middle, ["archive.jsonl", "line 5"]),
    (damage_edit_genome, ["archive.jsonl", "line 3", "edited"]),
    (damage_member_objectives, ["population_003.json", "archive.jsonl", "edited"]),
    (damage_duplicate_key, ["archive.jsonl", "line 17", "line 16"]),
    (damage_delete_snapshots, ["archive.jsonl", "generation 1", "no population_"]),
    (damage_two_snapshots, ["population_002.json", "population_003.json"]),
])
def test_damaged_run_folder_is_refused_with_one_line_and_nothing_written(tmp_path, damage, names):
    d = tmp_path / "r"
    whole_run(d)
    damage(d)
    before = folder_bytes(d)
    kw, calls = small(run_dir=d, generations=4, resume=True)
    with pytest.raises(ResumeError) as e:
        nsga2(**kw)
    msg = str(e.value)
    assert "\n" not in msg and all(s in msg for s in names), msg
    assert any(w in msg for w in ("restore", "start a new run")), msg  # what the user can do
    assert calls == [] and folder_bytes(d) == before


# ----------------------------------------------------------------------------------------------------
# A search that says when it stops finding, and stops on request (--patience)
# ----------------------------------------------------------------------------------------------------


def test_new_front_members_counted_against_brute_force(tmp_path):
    res = nsga2(**problem(generations=6)[0])
    dom = lambda a, b: all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))  # noqa: E731
    for s in res.stats:
        upto = [r for r in res.records if r["generation"] <= s["generation"]]
        front = {r["key"] for r in upto if not any(dom(o["objectives"], r["objectives"]) for o in upto)}
        assert s["new_front"] == sum(r["key"] in front for r in upto if r["generation"] == s["generation"])
    assert res.stats[0]["new_front"] > 0


def test_patience_stops_a_stagnant_search_and_a_resume_stays_stopped(tmp_path):
    lines = []
    full = nsga2(**problem(generations=40, log=lines.append)[0])
    hv = [s["hypervolume_archive"] for s in full.stats]
    # the first generation g after which the hypervolume did not grow for 3 generations
    stop = next(g for g in range(3, len(hv)) if max(hv[: g + 1]) == max(hv[: g - 2]))
    kw, _ = problem(generations=40, run_dir=tmp_path / "p", patience=3, log=lines.append)
    short = nsga2(**kw)
    assert short.generation == stop < 40 and runlog.stagnant_for(short.stats) == 3
    assert short.records == full.records[: len(short.records)]  # the same run, cut short
    assert any("has not grown for 3 generations (--patience 3)" in line for line in lines)
    again = nsga2(**problem(generations=40, run_dir=tmp_path / "p", patience=3, resume=True)[0])
    assert again.generation == stop and len(again.records) == len(short.records)
    assert any("no new front member" in line for line in lines)


def test_the_eta_counts_every_training_still_to_come():
    """Issue 26: the ETA is the evaluations left at this process's wall time per evaluation, plus the
    trainings after the search (weights, --final-steps) at a candidate's own training time; at the end
    of the last generation it is what follows the search, not 0."""
    lines = []
    p = runlog.Progress(lines.append, generations=2, n_offspring=3, format_info=None, after_search=5.0)
    p.batch_started(0.0)
    p.evaluation(0, 1, 4, dict(key="9.1.1.1.1-9.2.1.2.1", status="ok", seconds=8.0), [1.0, 2.0], t=10.0)
    assert lines[-1].endswith("ETA 2m10s")  # 10 s x (3 + 3 x 2 evaluations) + 8 s x 5 trainings
    assert "9.1.1.1.1-9.2.1.2.1 (1, 2)" in lines[-1]
    stat = dict(hypervolume=1.0, hypervolume_archive=1.0, front_size=1, population=4, offspring=3, repaired=0,
                repair_share=0.0, duplicates=0, failed=0, wall_s=10.0, bookkeeping_s=0.0)
    p.generation(2, stat)
    assert lines[-1].endswith("ETA 40s")  # the last generation: 8 s x the 5 trainings after it
    bare = runlog.Progress(lines.append, generations=2, n_offspring=3, format_info=None)
    bare.batch_started(0.0)
    bare.evaluation(0, 4, 4, dict(key="9.1.1.1.1-9.2.1.2.1", status="ok", seconds=8.0), [1.0, 2.0], t=10.0)
    bare.generation(2, stat)
    assert lines[-1].endswith("ETA 0s")  # nothing after the search


def test_the_trainings_after_the_search_are_counted_from_the_config():
    from workshop.config import RunConfig
    folder = runlog.RunFolder(Path("/nonexistent"), RunConfig.make("cpu", final_steps=1000), False, None, print, None)
    # top-8 weights; 10 genomes x 4 rates (D41) x 3 seeds x 10
    assert folder.trainings_after_search() == 8 + (8 + 2) * 4 * 3 * 1000 / 100
    one_rate = RunConfig.make("cpu", final_steps=1000, final_lrs=(1.0,))
    assert runlog.RunFolder(Path("/nonexistent"), one_rate, False, None, print, None).trainings_after_search() == 308
    folder = runlog.RunFolder(Path("/nonexistent"), RunConfig.make("cpu", weights=False), False, None, print, None)
    assert folder.trainings_after_search() == 0
    assert runlog.RunFolder(None, RunConfig.make("cpu"), False, None, print, None).trainings_after_search() == 0
