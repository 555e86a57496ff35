"""Multi-fidelity NSGA-II (fidelity.py, DESIGN.md D38): promotion against a brute-force order, the halving
against an explicit loop, every kill point of a book-backed batch against the uninterrupted one, the
rung-aware survival order, and a whole tiny synthesis with --rungs (killed, resumed, selected at the top)."""
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import evolve
import star
from workshop import cli, evaluation, fidelity, report, runlog
from test_cli import TINY, read_jsonl


def brute_fronts(F, cv):
    """Constrained domination by its definition, one pair at a time: feasible before infeasible, smaller
    violation first, Pareto dominance among the feasible; non-finite rows last."""
    n = len(F)
    finite = [bool(np.isfinite(F[i]).all()) for i in range(n)]

    def beats(i, j):
        if not finite[i] or not finite[j]:
            return finite[i] and not finite[j]
        if cv[i] > 0 or cv[j] > 0:
            return cv[i] < cv[j]
        return all(F[i] <= F[j]) and any(F[i] < F[j])
    left, fronts = set(range(n)), []
    while left:
        front = {i for i in left if not any(beats(j, i) for j in left if j != i)}
        fronts.append(sorted(front))
        left -= front
    return fronts


@given(st.integers(1, 12), st.integers(0, 10 ** 6), st.integers(1, 12))
def test_promotion_takes_whole_fronts_then_the_most_isolated_never_a_failed_one(n, seed, k):
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 4, size=(n, 2)).astype(float)  # small integers: ties and duplicates happen
    F[rng.random(n) < 0.2] = np.inf
    cv = np.where(rng.random(n) < 0.3, rng.integers(1, 3, n), 0).astype(float)
    chosen = fidelity.promote(F, k, cv)
    finite = [i for i in range(n) if np.isfinite(F[i]).all()]
    assert len(chosen) == min(k, len(finite)) and set(chosen) <= set(finite)
    rank = {i: r for r, front in enumerate(brute_fronts(F, cv)) for i in front}
    crowd = evolve.rank_and_crowding(F, cv)[1]  # crowding itself is checked against pymoo in test_evolve.py
    for i, j in itertools.product(chosen, set(finite) - set(chosen)):
        assert (rank[i], -crowd[i], i) < (rank[j], -crowd[j], j)


def toy_score(x: int, steps: int) -> tuple[float, float]:
    """A toy problem: quality improves with steps and is noisier at few steps; the cost is fixed."""
    noise = math.sin(7.3 * x + steps) * 10.0 / steps
    return (10.0 + (x % 7) - math.log(steps) + noise, float(x % 5))


class Trainer:
    """The run's evaluator on the toy problem: counts its trainings; may die after `die_after` of them."""

    def __init__(self, die_after=None):
        self.calls, self.die_after = [], die_after

    def __call__(self, individuals, generation, report, steps=None):
        for i, x in enumerate(individuals):
            if self.die_after is not None and len(self.calls) == self.die_after:
                raise KeyboardInterrupt
            self.calls.append((x, steps))
            ok = x % 11 != 3  # some candidates fail
            obj = toy_score(x, steps) if ok else (math.inf, math.inf)
            report(i, evaluation.Evaluation(obj, dict(perplexity=obj[0], seconds=1.0, status="ok" if ok else "error")))


def explicit_halving(xs, steps, eta):
    """The reference: successive halving written out, rung after rung (promote is checked above)."""
    out, alive = {}, list(xs)
    for r, s in enumerate(steps):
        F = np.array([toy_score(x, s) if x % 11 != 3 else (math.inf, math.inf) for x in alive])
        if r == len(steps) - 1:
            out.update({x: (r, tuple(F[j])) for j, x in enumerate(alive)})
            break
        up = {alive[j] for j in fidelity.promote(F, math.ceil(len(alive) / eta))}
        out.update({x: (r, tuple(F[j])) for j, x in enumerate(alive) if x not in up})
        alive = [x for x in alive if x in up]
    return out


def run_batch(mf, xs, g=1):
    got = {}
    mf(list(xs), g, lambda i, ev: got.__setitem__(xs[i], ev))
    return got


@pytest.mark.parametrize("steps,eta,n", [((5, 20), 4, 13), ((3, 9, 27), 3, 20), ((2, 8), 2, 1), ((1, 4, 16), 4, 7)])
def test_the_halving_equals_the_explicit_loop_and_trains_ceil_n_over_eta_per_rung(steps, eta, n):
    xs = list(range(100, 100 + n))
    trainer = Trainer()
    got = run_batch(fidelity.MultiFidelity(trainer, fidelity.Rungs(steps, eta), key=str), xs)
    want = explicit_halving(xs, steps, eta)
    assert {x: (ev.info["rung"], ev.objectives) for x, ev in got.items()} == want
    m = n
    for s in steps:  # n at the lowest rung, then ceil(n / eta) of the finite ones, and so on
        assert sum(1 for _, t in trainer.calls if t == s) == m
        m = min(math.ceil(m / eta), sum(1 for x, t in trainer.calls if t == s and x % 11 != 3))
    for x, ev in got.items():  # every rung's score is in the record, the last one is its objectives
        assert [r["steps"] for r in ev.info["rungs"]] == list(steps[: ev.info["rung"] + 1])
        assert tuple(ev.info["rungs"][-1]["objectives"]) == ev.objectives and ev.info["rung_steps"] == steps[ev.info["rung"]]


def test_keys_already_at_the_top_are_trained_there_only():
    trainer = Trainer()
    mf = fidelity.MultiFidelity(trainer, fidelity.Rungs((5, 20), 4), key=str, at_top=["101"])
    got = run_batch(mf, [100, 101, 102, 104])
    assert got[101].info["rung"] == 1 and [s for x, s in trainer.calls if x == 101] == [20]
    assert mf.rung_of("101") == 1


def test_every_kill_point_resumes_to_the_uninterrupted_batch_training_nothing_twice(tmp_path):
    """A batch evaluated through a book in rungs.jsonl is killed after each training in turn; the resumed
    evaluator, given only the individuals not yet reported (as the archive gives them), reports what the
    uninterrupted one reports, and the trainings of both attempts together are the uninterrupted ones."""
    rungs, xs = fidelity.Rungs((2, 8, 32), 3), list(range(200, 214))
    whole_trainer = Trainer()
    whole = run_batch(fidelity.MultiFidelity(whole_trainer, rungs, key=str), xs)
    for k in range(len(whole_trainer.calls)):
        path = tmp_path / f"rungs{k}.jsonl"
        first, reported = Trainer(die_after=k), {}
        with pytest.raises(KeyboardInterrupt):
            fidelity.MultiFidelity(first, rungs, key=str, book=runlog.RungLog(path))(
                xs, 1, lambda i, ev: reported.__setitem__(xs[i], ev))
        pending = [x for x in xs if x not in reported]
        second = Trainer()
        mf = fidelity.MultiFidelity(second, rungs, key=str, book=runlog.RungLog(path))
        rest = run_batch(mf, pending)
        both = {**reported, **rest}
        assert {x: (e.objectives, e.info["rung"]) for x, e in both.items()} == \
               {x: (e.objectives, e.info["rung"]) for x, e in whole.items()}
        assert sorted(first.calls + second.calls) == sorted(whole_trainer.calls)
        assert all(mf.rung_of(str(x)) == whole[x].info["rung"] for x in xs)


def test_a_torn_last_line_of_the_book_is_dropped_and_a_damaged_one_refused(tmp_path):
    path = tmp_path / "rungs.jsonl"
    book = runlog.RungLog(path)
    book.add_result(1, "a", 0, 5, evaluation.Evaluation((1.0, 2.0), dict(status="ok")))
    book.add_decision(1, 0, ["a"])
    path.write_text(path.read_text() + '{"generation": 1, "ke')
    again = runlog.RungLog(path)
    assert again.decision(1, 0) == frozenset({"a"}) and again.result(1, "a", 5).objectives == (1.0, 2.0)
    path.write_text('{"generation": 1}\n' + path.read_text())
    with pytest.raises(runlog.ResumeError, match="line 1 is not a rung record"):
        runlog.RungLog(path)


def test_survival_ranks_within_budgets_then_the_higher_rung_then_the_smaller_overshoot():
    rung = {"top": 2, "mid": 1, "low": 0, "top_over": 2, "top_far_over": 2, "low_over": 0, "top_unknown": 2}
    over = {"top_over": 0.1, "top_far_over": 5.0, "low_over": 0.01, "top_unknown": math.inf}
    v = fidelity.rung_violation(rung.get, 2, lambda k: over.get(k, 0.0))
    order = sorted(rung, key=v)
    assert order == ["top", "mid", "low", "top_over", "top_far_over", "top_unknown", "low_over"]
    assert v("top") == 0.0 and fidelity.rung_violation(rung.get, 2)("low") == 2.0


def test_a_lower_rung_never_enters_the_front_the_hypervolume_or_the_selection():
    """Even a low-rung record that would dominate (its perplexity from fewer steps is not comparable)."""
    rec = lambda k, ppl, cache, steps: dict(key=k, genome=k, generation=0, status="ok", perplexity=ppl,  # noqa: E731
                                            cache_bytes=cache, objectives=[ppl, cache], rung_steps=steps)
    recs = [rec("a", 10.0, 10, 1), rec("b", 20.0, 20, 3), rec("c", 30.0, 5, 3)]
    assert fidelity.top_rung(recs) == recs[1:] and fidelity.top_rung(recs[1:]) == recs[1:]
    assert [r["key"] for r in report.front_of(recs, "quality_cache")] == ["b", "c"]
    assert [r["key"] for r in report.select(recs, None, "quality_cache", 3)] == ["b", "c"]
    ref = (40.0, 40.0)
    assert report.archive_hypervolume_curve(recs, ref) == [(0, 3, evaluation.hypervolume(np.array([[20, 20], [30, 5]]), ref))]
    single = [{k: v for k, v in r.items() if k != "rung_steps"} for r in recs]  # no rungs: every record counts
    assert fidelity.top_rung(single) == single


@pytest.mark.parametrize("steps,eta", [((5,), 4), ((5, 5), 4), ((9, 3), 4), ((3, 9), 1)])
def test_bad_rungs_are_refused(steps, eta):
    with pytest.raises(ValueError):
        fidelity.Rungs(steps, eta)


# --- a whole synthesis with rungs ---

RUNGS = ["--rungs", "1,3", "--eta", "2", "--offspring", "4"]


@pytest.mark.slow
def test_a_synthesis_with_rungs_selects_at_the_top_and_a_kill_resumes_to_the_same_archive(tmp_path, monkeypatch):
    assert cli.main(TINY + RUNGS + ["--out", str(tmp_path), "--name", "whole", "--no-weights"]) == 0
    d = tmp_path / "whole"
    recs = read_jsonl(d / "archive.jsonl")
    assert {r["rung_steps"] for r in recs} == {1, 3} and all(r["rungs"][-1]["steps"] == r["rung_steps"] for r in recs)
    for g in {r["generation"] for r in recs}:  # per generation: ceil(n / 2) of the finite children go up
        gen = [r for r in recs if r["generation"] == g]
        ok = [r for r in gen if r["rungs"][0]["perplexity"] is not None]
        assert sum(r["rung"] == 1 for r in gen) == min(math.ceil(len(gen) / 2), len(ok))
    summary = (d / "summary.md").read_text()
    assert "## Proxy fidelity: successive halving over rungs 1, 3 steps, eta 2" in summary
    assert "Spearman with the next rung" in summary
    assert f"| 0 | 1 | {len(recs)} | " in summary  # every candidate trained at the lowest rung ...
    assert f"| 1 | 3 | {sum(r['rung'] == 1 for r in recs)} | - | - |" in summary  # ... the promoted at the top
    top = report.select(recs, None, "quality_cache", 3)
    assert top and all(r["rung_steps"] == 3 for r in top)
    front = report.front_of(recs, "quality_cache")  # the front and the hypervolume: the top rung's records only
    assert front and all(r["rung_steps"] == 3 for r in front)
    ref = json.loads((d / "population_002.json").read_text())["ref_point"]
    top_F = np.array([[math.inf if v is None else v for v in r["objectives"]] for r in recs if r["rung"] == 1])
    hv = evaluation.hypervolume(top_F, ref)
    assert read_jsonl(d / "generations.jsonl")[-1]["hypervolume_archive"] == hv == report.archive_hypervolume_curve(recs, ref)[-1][2]
    book = [json.loads(line) for line in (d / "rungs.jsonl").read_text().splitlines()]
    assert sum("promoted" in r for r in book) == 3  # one decision per generation (0, 1, 2) at rung 0
    assert json.loads((d / "config.json").read_text())["rungs"] == [1, 3]

    from workshop import candidate
    real, n = candidate.evaluate_genome, {"n": 0}

    def dies(*a, **k):
        n["n"] += 1
        if n["n"] == 18 + 3:  # 2 baselines x 3 rates x 3 seeds, then the 3rd training at the lowest rung of generation 0
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(candidate, "evaluate_genome", dies)
    assert cli.main(TINY + RUNGS + ["--out", str(tmp_path), "--name", "killed", "--no-weights"]) == 130
    kept = [json.loads(line) for line in (tmp_path / "killed" / "rungs.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and not (tmp_path / "killed" / "archive.jsonl").read_text()  # two rung-0 trainings
    n["n"] = 0
    monkeypatch.setattr(candidate, "evaluate_genome", lambda *a, **k: (n.__setitem__("n", n["n"] + 1), real(*a, **k))[1])
    assert cli.main(["--out", str(tmp_path), "--name", "killed", "--resume"]) == 0  # the run's options, rungs too
    assert n["n"] == sum("promoted" not in r for r in book) - 2  # nothing trained twice
    strip = lambda rs: [(r["genome"], r["generation"], r["objectives"], r["rung"]) for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "killed" / "archive.jsonl")) == strip(recs)


def test_rungs_must_end_at_the_steps_and_alone_they_set_them(tmp_path, capsys):
    assert cli.main(TINY + ["--rungs", "1,2", "--out", str(tmp_path), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "end --rungs with it" in err[0]
    args = cli.build_parser().parse_args(["--rungs", "10,40"])
    config, given = cli.config_of(args)
    assert config.steps == 40 and config.rungs == (10, 40) and {"rungs", "steps"} <= given


@pytest.mark.slow
def test_two_workers_train_the_rungs_to_the_same_archive(tmp_path):
    """The worker protocol carries each rung's steps: two worker processes give the one-process archive."""
    argv = TINY + RUNGS + ["--generations", "1", "--no-weights", "--out", str(tmp_path)]
    assert cli.main(argv + ["--name", "one"]) == 0
    assert cli.main(argv + ["--name", "two", "--workers", "2"]) == 0
    strip = lambda d: sorted((r["key"], r["generation"], r["objectives"], r["rung"],  # noqa: E731
                              [x["perplexity"] for x in r["rungs"]]) for r in read_jsonl(tmp_path / d / "archive.jsonl"))
    assert strip("one") == strip("two")
