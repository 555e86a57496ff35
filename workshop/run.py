"""A whole synthesis with its run folder: star.synthesize with the workshop in its seams (DESIGN.md D40).

    from workshop import run
    from workshop.config import RunConfig
    result = run.synthesize(RunConfig.make("cpu", generations=2), run_dir="runs/mine")   # resumable
    result.front, result.top, result.baselines, result.final                            # archive records

The loop is star.py's; this module supplies what a run adds around it. With a run folder (`run_dir`,
the command line's runs/<name>/), everything a run learns is written as soon as it is known
(runlog.py: config.json, archive.jsonl, baselines.jsonl, generations.jsonl, population_*.json;
report.py: summary.md, pareto.png). A killed run continues with `resume=True` (--resume) and loses no
finished evaluation; a second process on a live run folder is refused (a lock). Candidates may go to
worker processes or Ray (parallel.py), be measured at a deployment shape and kept under budgets
(deployment.py), climb rungs of successive halving (fidelity.py); after the search the selection is
retrained longer (final_steps) and its weights kept (D24).

Bad input is a UsageError (one line; exit 2 from the command line) before anything is written; a run
that cannot go on is RunFailed (exit 1), and what it wrote is kept.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

import corpus
import genome
import star
import train
from workshop import candidate, deployment, evaluation, parallel, report, runlog, userdata, words
from workshop.config import RunConfig, RunFailed, UsageError, in_python


def _in_python_words(fn):
    """A UsageError or RunFailed out of `fn` in the words of a Python call (the command line prints its own)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, RunFailed) as e:
            raise in_python(e) from None
    return call


@_in_python_words
def synthesize(config: RunConfig, *, run_dir=None, resume: bool = False, given=None, device: str = "auto",
               data: Optional[corpus.Data] = None, workers: int = 1, ray: Optional[str] = None,
               log: Callable[[str], None] = print) -> star.Synthesis:
    """star.synthesize in a run folder that survives kills (`resume=True` continues it; `given`: the fields
    this call sets, default all; the others are the run's, config.py's rule), or in memory without
    `run_dir`. `workers`/`ray` spread candidates over processes without changing results (parallel.py)."""
    t_start = time.perf_counter()
    given = {f.name for f in fields(config)} if given is None else set(given)
    data, device, folder = _prepare(config, data, device, run_dir, resume, given, log)
    config, path = folder.config, folder.path
    cfg, tcfg = config.model_config(data.vocab_size), config.train_config(device)
    deploy = deployment.Costs.open(config, folder, cfg, device, log)  # measured costs, budgets (D34-D36); or inert

    @deploy.trained  # measured first, when the run measures
    def train_one(g, steps=None, seed=None, keep=None, lr=None, lr_grid=()):  # every training, as a candidate's (D19)
        tc = config.train_config(device, steps) if steps else tcfg  # at `lr` (default the run's) or over `lr_grid`
        with parallel.candidate_threads(device):
            return candidate.evaluate_genome(g, cfg, tc if lr is None else dataclasses.replace(tc, lr=lr), data, config,
                                             seed=seed, keep=keep, lr_grid=lr_grid)
    with folder, contextlib.ExitStack() as stack:
        for line in _header(config, data, device, path):
            log(line)
        # the baselines, from baselines.jsonl or trained now (D15, D21); with seed_baselines they open
        # generation 0 (RunConfig.initial) and their records under the search's seed and rate are reused (not
        # with --lr-grid); each baseline trains at every rate of its grid (D41); the selection picks at the top
        # rung within the budgets (RunConfig.eligible)
        done = {(name, seed, lr): folder.baseline(name, make(config.depth), seed, lr, train_one)
                for name, make in genome.BASELINES.items() for lr in config.rates(config.baseline_lrs)
                for seed in config.training_seeds()}
        baselines = list(done.values())
        groups = report.rate_groups(baselines)
        for name, row in groups.items():
            log(f"baseline {name:<14} at its best peak lr: ppl {report.fmt_mean_std(row)}, lr {report.rate_words(row)}")
        for warning in report.edge_warnings(groups, "--baseline-lrs"):
            log(warning)
        reuse = {b["key"]: b for b in baselines if b["seed"] == config.seed and b["lr"] == config.lr} \
            if config.seed_baselines and not config.lr_grid else {}

        def one(g, generation, steps=None):  # steps: a rung of a multi-fidelity search (D38)
            b = reuse.get(genome.canonical_str(g)) if generation == 0 else None
            info = {k: v for k, v in b.items() if k not in ("name", "genome", "key")} if b else \
                train_one(g, steps, lr_grid=config.lr_grid)[0]
            return evaluation.Evaluation(objectives=candidate.objectives_of(info, config.objective), info=info)

        costs = lambda g: candidate.describe_costs(g, cfg, config.cache_len)  # noqa: E731  (a failed one's record)
        evaluate = stack.enter_context(parallel.evaluator(one, config, device, workers=workers, ray=ray,
                                                          timeout=config.timeout, costs=costs, log=log))
        evaluate, var = folder.halving(deploy.evaluator(evaluate), deploy.variation(config.variation()), reuse)
        book = stack.enter_context(folder.log_book(var, evaluate, config.search(),
                                                   on_generation=lambda result: folder.summary(baselines, result, [])))
        with folder.words():
            found = star.synthesize(config, data=data, device=device,
                                    baseline=lambda name, g, seed, lr: done[(name, seed, lr)],
                                    initial=config.initial(baselines), evaluate=book.evaluate, variation=var,
                                    start=book.start, on_generation=book.after, eligible=config.eligible, log=log)
        stack.close()  # the worker processes end with the search, however it ends
        result = book.result()
        # after the search: with final_steps the top-k and the baselines are retrained longer under the
        # same seeds (D21), each at every rate of final_lrs (D41); the top-k retrained as searched, their
        # weights kept and checked (D24)
        final = []
        if config.final_steps:
            jobs = [dict(genome=rs[0]["key"], key=rs[0]["key"], name=n) for n, rs in star.at_best_rate(baselines).items()]
            jobs += [dict(genome=r["key"], key=r["key"], generation=r["generation"]) for r in found.top]
            final = [folder.retrain(job, seed, lr, train_one) for job in jobs
                     for lr in config.rates(config.final_lrs) for seed in config.training_seeds()]
        folder.keep_weights(found.top, train_one, final)
        folder.summary(baselines, result, final)
        log(f"done: {len(result.records)} candidates; wall time {words.fmt_time(time.perf_counter() - t_start)}"
            + (" (this resume)" if folder.resume else "") + (f"; summary in {path / 'summary.md'}" if path else ""))
    return dataclasses.replace(found, front=report.front_of(result.records, config.objective), final=final,
                               ref_point=result.ref_point, run_dir=path)


def _header(config: RunConfig, data, device: str, path) -> list[str]:
    return [f"STAR {config.objective} | preset {config.preset} | data {data.name} | d {config.d_model} depth "
            f"{config.depth} | {config.steps} steps/candidate | population {config.population} + {config.offspring} x "
            f"{config.generations} generations | {device} | {path or 'in memory'}"] + config.data_fit(data)


def _prepare(config: RunConfig, data, device: str, run_dir, resume: bool, given: set[str], log):
    """The checks before a synthesis writes anything: the configuration (on --resume, the run's), the
    device, the data, the run folder."""
    path = None if run_dir is None else Path(run_dir)
    if path is not None and resume:
        config = runlog.resumed_config(path, config, given)
    try:
        device = str(train.resolve_device(device))
        data = data if data is not None else userdata.load_data(config.data, config.vocab_size)
        data.check(config.seq_len)
    except (ValueError, corpus.DataError) as e:
        raise UsageError(str(e)) from None
    if config.data_fingerprint not in (None, data.fingerprint):
        raise UsageError((f"--resume: the data changed since {path} began" if resume else "the data is not the "
                          "configuration's data_fingerprint") + f": it was {config.data_fingerprint}, it is now "
                         f"{data.fingerprint}; restore the run's data, or start a new run with another --name")
    config = dataclasses.replace(config, data_fingerprint=data.fingerprint)  # D23: recorded, checked on --resume
    try:
        config.model_config(data.vocab_size)  # widths that do not fit: one line now, not at the first candidate
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.fitted(data) != config:
        log(f"note: the held-out set is capped at the held-out split: {config.fitted(data).eval_tokens:,} tokens "
            f"instead of --eval-tokens {config.eval_tokens:,}")
        config = config.fitted(data)
    folder = runlog.RunFolder.open(path, config, resume, given, log,
                                   write_summary=report.summarize)
    return data, device, folder
