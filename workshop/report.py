"""What a run tells its user (workshop tier): summary.md, pareto.png, --compare, and the statistics they
use (mean ± std over seeds, Spearman, the n.s. rule of D21).

One hypervolume per run: everything here is measured at the run's reference point, fixed after
generation 0 (evaluation.default_ref_point of its objectives) and stored in every snapshot; the summary and
the picture state it. `--compare` takes one *common* reference point over the runs it compares, and
says so.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import evolve
import genome
import star
from workshop import describe, evaluation, fidelity, meter, plugins, runlog, words
from workshop.config import VERSION, RunConfig, UsageError, metrics_of
from workshop.runlog import fmt_ppl


def fmt_value(m: str, v) -> str:
    """A metric's value in words: bytes in decimal units, counts with separators, times in ms, else 4 digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else "inf"
    kind = m.partition("@")[0]
    if kind.endswith("bytes"):
        return words.fmt_bytes(v)
    if kind.endswith("params"):
        return f"{v:,.0f}"
    return f"{v:.3g} ms" if kind.endswith("_ms") else f"{v:.4g}"


def candidate_rate_words(rc: RunConfig) -> str:
    """The sentence that says at which peak learning rate the candidates trained (D41)."""
    if not rc.lr_grid:
        return f"Every candidate trains at peak learning rate {rc.lr:.3g}."
    return (f"Each candidate trains at peak learning rates {', '.join(f'{rc.lr * m:.3g}' for m in rc.lr_grid)} "
            "and is scored at its best (its rate: the lr column).")


def fmt_ref(metrics, ref) -> str:
    """A reference point in words: 'perplexity 25.9, cache_bytes 5.2 MB'."""
    return ", ".join(f"{m} {fmt_value(m, v)}" for m, v in zip(metrics, ref))


def extra_metrics(rc: RunConfig) -> list[str]:
    """Columns beyond perplexity, params and cache: the objective's other metrics, the budgets' and, when
    the run measures, the measured ones at the longest context (D34-D37)."""
    more = list(metrics_of(rc.objective)) + list(rc.budgets()) + (list(meter.KINDS) if rc.measures else []) \
        + (["lr"] if rc.lr_grid else [])
    return [m for m in dict.fromkeys(more) if m not in ("perplexity", "params", "cache_bytes")]


def _cells(r: dict, extra) -> str:
    return "".join(f" {fmt_value(m, r.get(m))} |" for m in extra)


def front_of(records: list[dict], objective: str) -> list[dict]:
    """The Pareto front of the candidates that trained, among those scored at the highest rung the run
    measured (D38: a lower rung's perplexity is not comparable; a single-fidelity run: all of them)."""
    return star.pareto_front(fidelity.top_rung(records), metrics_of(objective))


def select(records: list[dict], baseline: Optional[dict], objective: str, k: int,
           budget: Optional[Callable[[dict], bool]] = None) -> list[dict]:
    """The paper's selection (star.select_top_k) among the records scored at the highest rung (D38) and
    within the run's budgets (D35): the k lowest-perplexity candidates smaller than Transformer++ in the
    efficiency objectives searched (any metric of a comma list that Transformer++ has; none for quality)."""
    return star.select_top_k(fidelity.eligible(records, budget), baseline, metrics_of(objective), k)


def summarize(folder: runlog.RunFolder, baselines: list[dict], result: runlog.SearchResult, final: list[dict]) -> None:
    """summary.md and pareto.png of a run folder, from the search's state (runlog.RunFolder's hook)."""
    tpp = rate_groups(baselines).get("transformer++")
    c = folder.config
    write_summary(folder.path, c, baselines, result.records, result.stats, final,
                  select(result.records, tpp, c.objective, c.final_top, c.within_budgets), result.ref_point)


def _row(r: dict, label: str = "", extra=(), cursed: frozenset = frozenset()) -> str:
    mark = f" {CURSE}" if r["key"] in cursed else ""
    return (f"| {label or r.get('origin', '')} | `{r['key']}` | {fmt_ppl(r.get('perplexity'))}{mark} | "
            f"{r['params']:,} | {words.fmt_bytes(r['cache_bytes'])} |{_cells(r, extra)} {r.get('status', '')} |")


def measured_words(rc: RunConfig) -> str:
    return (f"Measured (D34): a freshly initialised model of each genome at width {rc.deploy_d_model} (head width "
            f"{rc.deploy_head_dim}), {rc.deploy_dtype}, batch 1, contexts {', '.join(map(str, rc.deploy_contexts))}, "
            f"with `{rc.meter}`: ttft_ms = prefill of the context, decode_ms / decode_p95_ms = p50 / p95 per decoded "
            f"token, memory_bytes = peak of prefill + decode (weights included); without a suffix at the longest "
            "context. Raw repeats, spreads, thread count and the Transformer++ reference of each window are in "
            "measurements.jsonl.")


def feasible_shares(rc: RunConfig, records: list[dict]) -> list[tuple[int, int, int]]:
    """(generation, evaluated, within every budget) per generation (D35)."""
    gens = sorted({r["generation"] for r in records})
    return [(g, len(rs), sum(rc.within_budgets(r) for r in rs))
            for g in gens for rs in [[r for r in records if r["generation"] == g]]]


def budget_section(rc: RunConfig, records: list[dict], baselines: list[dict]) -> list[str]:
    words = {"params": "by formula: no genome over it is trained", "cache_bytes": "by formula: no genome over it is trained",
             "decode_ms": "measured: constrained domination", "memory_bytes": "measured: constrained domination"}
    lines = ["", "## Budgets (D35)", ""] + [f"- {m} ≤ {fmt_value(m, cap)} ({words[m]})" for m, cap in rc.budgets().items()]
    lines += [f"- baseline {b['name']}: {'within' if rc.within_budgets(b) else 'over'} the budgets"
              for b in rate_groups(baselines).values()]
    lines += ["", "| generation | evaluated | within the budgets | share |", "|---|---|---|---|"]
    lines += [f"| {g} | {n} | {k} | {k / n:.0%} |" for g, n, k in feasible_shares(rc, records)]
    return lines


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; (inf, 0) when none is."""
    v = np.array([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.inf, 0.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def seed_groups(records: list[dict], field: str) -> dict[str, dict]:
    """Records of one genome under several seeds -> one row per `field` value: the genome's costs, the
    perplexity's mean and std over its seeds (D21), the seeds and their perplexities, in first-seen order."""
    out: dict[str, dict] = {}
    for r in records:
        row = out.setdefault(r[field], dict(r, seeds=[], ppls=[]))
        row["seeds"].append(r.get("seed"))
        row["ppls"].append(r.get("perplexity") if r.get("status") == "ok" else math.inf)
    for row in out.values():
        row["perplexity"], row["ppl_std"] = mean_std(row["ppls"])
        row["status"] = "ok" if math.isfinite(row["perplexity"]) else row["status"]
    return out


def rate_groups(records: list[dict], field: str = "name") -> dict[str, dict]:
    """seed_groups of each `field` value (a baseline's name, a genome's key) at its best peak rate
    (star.at_best_rate, D41), with its `lr`, the seed mean at every rate it trained at (`rates`, lowest
    rate first) and `at_edge` when the best is the lowest or highest of two or more rates."""
    out = {}
    for k, best in star.at_best_rate(records, field).items():
        row = seed_groups(best, field)[k]
        mine = [r for r in records if r[field] == k]
        rates = sorted({r.get("lr") for r in mine}, key=lambda lr: -1 if lr is None else lr)
        row.update(lr=best[0].get("lr"), at_edge=len(rates) > 1 and best[0].get("lr") in (rates[0], rates[-1]),
                   rates={lr: seed_groups([r for r in mine if r.get("lr") == lr], field)[k]["perplexity"] for lr in rates})
        out[k] = row
    return out


def rate_words(row: dict) -> str:
    """'1.29e-2 (best of 6.45e-3: 20.5, 1.29e-2: 19.8, 2.58e-2: 26.0; at the grid's edge)'."""
    if row.get("lr") is None:
        return "-"
    if len(row["rates"]) < 2:
        return f"{row['lr']:.3g}"
    grid = ", ".join(f"{lr:.3g}: {fmt_ppl(v)}" for lr, v in row["rates"].items())
    edge = "; at the grid's EDGE" if row["at_edge"] else ""
    return f"{row['lr']:.3g} (best of {grid}{edge})"


def edge_warnings(groups: dict[str, dict], option: str) -> list[str]:
    """A warning for each row whose best rate lies at its grid's edge (D41): its optimum may lie beyond."""
    return [f"warning: {BASELINE_NAMES.get(k, k)}'s best peak rate {row['lr']:.3g} is at the "
            f"{'lowest' if row['lr'] == min(row['rates']) else 'highest'} rate of its grid: its best may lie beyond; "
            f"widen {option}" for k, row in groups.items() if row.get("at_edge")]


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 2 points or a constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # ties share their average rank
            r[v == val] = r[v == val].mean()
        return r
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_spearman(x, y, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the Spearman correlation (resampled pairs; nan if < 3 pairs)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rhos = [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(n))]
    rhos = [r for r in rhos if math.isfinite(r)]
    return (float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))) if rhos else (math.nan, math.nan)


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df may be fractional, as Welch's is): half
    the regularized incomplete beta I_x(df/2, 1/2) at x = df / (df + t^2), by its continued fraction."""
    if not math.isfinite(t):
        return 0.0 if t > 0 else 1.0
    if t < 0:
        return 1.0 - student_t_sf(-t, df)
    return 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b): Lentz's continued fraction, on the side where it converges."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def compute_tokens(rc: RunConfig, records: list[dict]) -> tuple[int, float]:
    """Training tokens of the records' trainings (every rung a record reached, D38), and the total compute
    counted as training tokens plus evaluation tokens at a third of their weight (a forward pass is about
    a third of a training step)."""
    trained = evaluated = 0
    for r in records:
        steps = [x["steps"] for x in r.get("rungs") or []] or [rc.steps]
        trained += sum(steps) * rc.batch * rc.seq_len
        evaluated += len(steps) * rc.eval_windows * rc.seq_len
    return trained, trained + evaluated / 3


def fidelity_section(rc: RunConfig, records: list[dict], top: list[dict]) -> list[str]:
    """How faithful the search's score was (D38): for a multi-fidelity run the rung-to-rung Spearman over
    the promoted candidates (with its count and bootstrap interval), each rung's count, the top-k's score at
    every rung and the compute; a single-fidelity run says that it did not measure it, and how to."""
    trained, total = compute_tokens(rc, records)
    if not rc.rungs:
        return ["", "## Proxy fidelity", "",
                f"Not measured: every candidate was scored once, at {rc.steps} steps under one seed, so nothing here says "
                f"how well that score ranks longer trainings. Measure it with `--rungs {max(1, rc.steps // 4)},{rc.steps}` "
                "(the rank correlation between rungs, D38) or `--final-steps N` (the selection retrained longer). "
                f"Compute: {trained:,} training tokens, {total:,.0f} counting evaluation at a third."]
    trained_at = {x: sum(any(y.get("steps") == x for y in r.get("rungs") or []) for r in records) for x in rc.rungs}
    lines = ["", f"## Proxy fidelity: successive halving over rungs {', '.join(map(str, rc.rungs))} steps, eta {rc.eta} (D38)", "",
             "Every child is trained at the lowest rung; the best ceil(n/eta) by non-dominated rank and crowding go up a "
             "rung and are trained again from scratch; the selection is made among top-rung candidates only.", "",
             "| rung | steps | candidates trained | Spearman with the next rung (promoted) | 95% bootstrap interval |",
             "|---|---|---|---|---|"]
    for i, steps in enumerate(rc.rungs):
        cell, interval = "-", "-"
        if i + 1 < len(rc.rungs):
            pairs = rung_pairs(records, steps, rc.rungs[i + 1])
            if pairs:
                x, y = zip(*pairs)
                lo, hi = bootstrap_spearman(x, y)
                cell, interval = f"{spearman(x, y):.2f} over {len(pairs)}", f"[{lo:.2f}, {hi:.2f}]"
        lines.append(f"| {i} | {steps} | {trained_at[steps]} | {cell} | {interval} |")
    single = len(records) * rc.steps * rc.batch * rc.seq_len
    lines += ["", f"Compute: {trained:,} training tokens ({trained / single:.0%} of training every candidate at {rc.steps} "
                  f"steps), {total:,.0f} counting evaluation at a third."]
    if top:
        lines += ["", "The selected top-k at every rung (perplexity):", "",
                  "| | genome | " + " | ".join(f"{x} steps" for x in rc.rungs) + " |", "|---|---|" + "---|" * len(rc.rungs)]
        for i, r in enumerate(top):
            at = {x["steps"]: x.get("perplexity") for x in r.get("rungs") or []}
            lines.append(f"| #{i + 1} | `{r['key']}` | " + " | ".join(fmt_ppl(at.get(x)) if x in at else "-" for x in rc.rungs) + " |")
    return lines


def rung_pairs(records: list[dict], steps: int, higher: int) -> list[tuple[float, float]]:
    """(perplexity at `steps`, perplexity at `higher`) of every candidate scored at both rungs (D38)."""
    return [(a["perplexity"], b["perplexity"]) for r in records for a in r.get("rungs") or [] for b in r.get("rungs") or []
            if a["steps"] == steps and b["steps"] == higher and _finite(a.get("perplexity")) and _finite(b.get("perplexity"))]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def fmt_mean_std(row: dict) -> str:
    if not math.isfinite(row["perplexity"]):
        return "inf"
    n = sum(math.isfinite(x) for x in row["ppls"])
    return f"{row['perplexity']:.3f} ± {row['ppl_std']:.3f} (n={n})" if n > 1 else f"{row['perplexity']:.3f}"


def versus(r: dict, base: dict) -> str:
    """A candidate's perplexity against a baseline's seed mean: the difference, and on an *advantage*
    (a lower perplexity) 'n.s.' when it is within 2 of the baseline's seed standard deviations (D21),
    'untested' when the baseline has one finite seed (no spread to test against). A disadvantage is
    the bare difference: it claims nothing."""
    if not (math.isfinite(r.get("perplexity", math.inf)) and math.isfinite(base["perplexity"])):
        return "-"
    diff = r["perplexity"] - base["perplexity"]
    if diff >= 0:
        return f"{diff:+.2f}"
    if sum(math.isfinite(x) for x in base["ppls"]) < 2:
        return f"{diff:+.2f} untested"
    return f"{diff:+.2f}" + ("" if -diff > 2 * base["ppl_std"] else " n.s.")


EFFICIENCY_WORDS = {"params": "fewer parameters", "cache_bytes": "a smaller cache"}


BASELINE_NAMES = {"transformer++": "Transformer++", "striped-mamba": "StripedMamba"}


def beats(records: list[dict], tpp: dict | None, objective: str) -> list[dict]:
    """The candidates that beat a baseline (Transformer++, or another seed group `tpp`) under this budget
    (D23): a perplexity lower than its seed mean by more than 2 of its seed standard deviations (it needs
    2 finite seeds), and smaller in every efficiency objective searched; best first."""
    if tpp is None or sum(math.isfinite(x) for x in tpp["ppls"]) < 2:
        return []
    metrics = metrics_of(objective)[1:]
    return sorted((r for r in records if r.get("status") == "ok" and math.isfinite(r.get("perplexity", math.inf))
                   and tpp["perplexity"] - r["perplexity"] > 2 * tpp["ppl_std"]
                   and all(r[m] < tpp[m] for m in metrics)), key=lambda r: r["perplexity"])


def generation_words(done: int, planned: int) -> str:
    """How many generations a run has, counted as its console counts them (`gen 5/5`: after generation 0)."""
    of = f"{done} of {planned}" if done < planned else f"{done}"
    return f"the initial population (generation 0) and {of} generation{'s' if planned != 1 else ''} of offspring"


def verdicts(records: list[dict], base: dict[str, dict], objective: str) -> list[str]:
    """The verdict against each baseline, each with the run's random control, one paragraph each."""
    control = random_control(records)
    out = []
    for key, row in base.items():
        out += [verdict(records, row, objective, BASELINE_NAMES.get(key, key), control if control else None), ""]
    return out[:-1] or [verdict(records, None, objective)]


def random_control(records: list[dict]) -> list[dict]:
    """The run's own control: its random generation-0 candidates (sampled, not --init or a baseline)."""
    return [r for r in records if r.get("generation") == 0 and r.get("origin") == "sample"]


def verdict(records: list[dict], tpp: dict | None, objective: str, name: str = "Transformer++",
            control: Optional[list[dict]] = None) -> str:
    """The summary's answer for one baseline (`tpp`, called `name`): does any candidate beat it under this
    budget? With `control` (the random generation-0 candidates), how many of those already did."""
    if tpp is None or not math.isfinite(tpp["perplexity"]):
        return f"**No verdict against {name}:** it has no finite perplexity to compare with."
    return _verdict(records, tpp, objective, name) + ("" if control is None else _control_words(control, tpp, objective))


def _control_words(control: list[dict], base: dict, objective: str) -> str:
    if sum(math.isfinite(x) for x in base["ppls"]) < 2:
        return ""
    n = len(beats(control, base, objective))
    return (f" Of the run's {len(control)} random generation-0 candidates (its own control: sampling alone), "
            f"{n} already beat{'s' if n == 1 else ''} it.")


def _verdict(records: list[dict], tpp: dict, objective: str, name: str) -> str:
    smaller = " and ".join(EFFICIENCY_WORDS.get(m, f"a lower {m}") for m in metrics_of(objective)[1:])
    rule = f"a perplexity lower by more than 2 of its seed standard deviations{f' and {smaller}' if smaller else ''}"
    n_seeds = sum(math.isfinite(x) for x in tpp["ppls"])
    if n_seeds < 2:
        return (f"**No candidate is shown to beat {name} under this budget:** it was trained under one seed, "
                f"so its noise is unknown and no advantage can be tested ({rule}; use --baseline-seeds 3).")
    won = beats(records, tpp, objective)
    if not won:
        return (f"**No candidate beats {name} under this budget:** none has {rule} "
                f"({tpp['perplexity']:.3f} ± {tpp['ppl_std']:.3f}, {n_seeds} seeds{_at_rate(tpp)}).")
    return (f"**{len(won)} candidate{'s' if len(won) > 1 else ''} beat{'' if len(won) > 1 else 's'} {name} "
            f"under this budget** ({rule}); the best, `{won[0]['key']}`, by {tpp['perplexity'] - won[0]['perplexity']:.2f} "
            f"perplexity ({won[0]['perplexity']:.3f} against {tpp['perplexity']:.3f} ± {tpp['ppl_std']:.3f}{_at_rate(tpp)}), "
            "scored under one seed.")


def _at_rate(row: dict) -> str:
    """', at its best peak rate 0.0129' (D41); nothing for a row without a rate."""
    return "" if row.get("lr") is None else f", at its best peak rate {row['lr']:.3g}"


CURSE = "†"  # the mark of an optimistic best single-seed score


def versions() -> str:
    """The versions a summary names: torch's and the project's (`git describe --always --dirty` of this
    folder when git can say, else config.VERSION), and Python's."""
    import platform
    import subprocess

    import torch

    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, timeout=10,
                             capture_output=True, text=True)
        project = git.stdout.strip() if git.returncode == 0 and git.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        project = None
    project = f"git {project}" if project else f"version {VERSION}"
    return f"torch {torch.__version__}, STAR {project}, Python {platform.python_version()}"


def archive_hypervolume_curve(records: list[dict], ref) -> list[tuple[int, int, float]]:
    """(generation, evaluations so far, hypervolume of everything evaluated so far) per generation; with
    rungs (D38) every candidate counts as an evaluation and the top rung's make the hypervolume."""
    out, F, n = [], [], 0
    top = {id(r) for r in fidelity.top_rung(records)}
    gens = sorted({r["generation"] for r in records})
    for g in gens:
        n += sum(r["generation"] == g for r in records)
        F += [[math.inf if v is None else v for v in r["objectives"]] for r in records if r["generation"] == g and id(r) in top]
        out.append((g, n, evaluation.hypervolume(np.array(F, dtype=float).reshape(-1, len(ref)), ref)))
    return out


def write_summary(run_dir: Path, rc: RunConfig, baselines: list[dict], records: list[dict], stats: list[dict],
                  final: list[dict], top: list[dict], ref) -> None:
    """summary.md: baselines (mean ± std over seeds), the final Pareto front with its significance
    against each baseline, the selected top-k, the --final-steps retraining with the proxy's rank
    correlation, and the hypervolume curve."""
    base = rate_groups(baselines)
    front = front_of(records, rc.objective)
    n_ok = sum(r.get("status") == "ok" for r in records)
    # winner's curse: the lowest of many one-seed scores is optimistic; marked until --final-steps retrains it
    retrained = {r["key"] for r in final}
    cursed = frozenset(r["key"] for r in (front[:1] + top[:1]) if r["key"] not in retrained) if n_ok > 1 else frozenset()
    n_off = sum(s.get("offspring", 0) for s in stats if s.get("generation", 0) > 0)
    rep = sum(s.get("repaired", 0) for s in stats if s.get("generation", 0) > 0)
    dup = sum(s.get("duplicates", 0) for s in stats if s.get("generation", 0) > 0)
    failed = [r for r in records if r.get("status") != "ok"]
    extra = extra_metrics(rc)
    cols = "| | genome | perplexity | params | cache |" + "".join(f" {m} |" for m in extra) + " status |"
    rule_ = "|---|---|---|---|---|" + "---|" * (len(extra) + 1)
    b_extra = [m for m in extra if m != "lr"]  # the baselines' rates have a column of their own
    names = list(base)
    vs_head = "".join(f" vs {n} |" for n in names)
    lines = [f"# STAR run: {rc.objective} ({rc.preset} preset, {rc.algorithm})", "",
             f"Objectives (minimised): {', '.join(metrics_of(rc.objective))}. Width {rc.d_model}, "
             f"depth {rc.depth}, {rc.steps} steps x {rc.batch} x {rc.seq_len} tokens per candidate; "
             f"cache at T = {rc.cache_len}, bf16, batch 1. {candidate_rate_words(rc)}", "",
             f"{len(records)} candidates evaluated ({len(failed)} failed): {generation_words(len(stats) - 1, rc.generations)}.", "",
             f"Data: `{rc.data or 'the default corpus'}`, {rc.data_fingerprint or 'fingerprint not recorded'}. "
             f"Versions: {versions()}.", "",
             *verdicts(records, base, rc.objective), "",
             f"## Baselines (same budget, {rc.baseline_seeds} training seeds: mean ± std, each at its best peak rate)", "",
             "Each baseline trains at every rate of its grid (--baseline-lrs: multiples of --lr) under every seed; "
             "every comparison in this summary and in pareto.png uses its best rate by seed mean (D41).", "",
             "| | genome | perplexity (mean ± std) | params | cache |" + "".join(f" {m} |" for m in b_extra)
             + " peak lr (seed means) | status |", "|---|---|---|---|---|" + "---|" * (len(b_extra) + 2)]
    lines += [f"| {name} | `{b['key']}` | {fmt_mean_std(b)} | {b['params']:,} | {words.fmt_bytes(b['cache_bytes'])} |"
              f"{_cells(b, b_extra)} {rate_words(b)} | {b['status']} |" for name, b in base.items()]
    lines += [f"\n**{w[0].upper()}{w[1:]}**" for w in edge_warnings(base, "--baseline-lrs")]
    if rc.measures:
        pairs = [(r["cache_bytes"], r["decode_ms"]) for r in records if r.get("decode_ms") is not None]
        lines += ["", measured_words(rc) + f" Spearman between cache_bytes (formula) and decode_ms (measured) over the "
                  f"{len(pairs)} evaluated candidates: {spearman(*zip(*pairs)) if len(pairs) > 1 else math.nan:.2f}."]
    lines += ["", f"## Pareto front of all candidates ({len(front)}{', scored at the top rung' if rc.rungs else ''})", "",
              "Each candidate is scored under one seed (the first baseline seed). A negative difference is an "
              "advantage: \"n.s.\" when it is within 2 of the baseline's seed standard deviations (not significant), "
              "\"untested\" when the baseline has one seed; a positive one (worse) carries no mark."
              + (f" {CURSE}: the best of {n_ok} single-seed scores, optimistic (the winner's curse: the lowest of many "
                 "noisy scores is lower than the genome's mean); retrain it with --final-steps N to measure it."
                 if cursed else ""), "",
              cols + vs_head, rule_ + "---|" * len(names)]
    lines += [_row(r, f"gen {r['generation']}", extra, cursed) + "".join(f" {versus(r, base[n])} |" for n in names)
              for r in front]
    rule = {"quality": "lowest perplexity", "quality_size": "fewer parameters than Transformer++",
            "quality_cache": "smaller cache than Transformer++",
            "quality_size_cache": "fewer parameters and a smaller cache than Transformer++",
            "quality_latency": "faster decoding than Transformer++", "quality_memory": "less peak memory than Transformer++",
            }.get(rc.objective, f"smaller {', '.join(m for m in rc.metrics if m != 'perplexity')} than Transformer++")
    rule += ", within the budgets" if rc.budgets() else ""
    lines += ["", f"## Selected top-{rc.final_top} ({rule}, by perplexity)", ""]
    won = {r["key"] for r in beats(records, base.get("transformer++"), rc.objective)}
    if top and not won & {r["key"] for r in top}:
        lines += ["The paper's rule picks these, but none of them beats Transformer++ under this budget (the verdict "
                  "above): they are smaller, not shown better.", ""]
    if top:
        lines += [cols + vs_head, rule_ + "---|" * len(names)]
        lines += [_row(r, f"#{i + 1}", extra, cursed) + "".join(f" {versus(r, base[n])} |" for n in names)
                  for i, r in enumerate(top)]
        lines += ["", "The best selected backbone:", "", "```", describe.describe(genome.Genome.parse(top[0]["key"])), "```"]
    else:
        lines += ["No candidate beats Transformer++ on the efficiency objectives with a finite perplexity."]
    if rc.budgets():
        lines += budget_section(rc, records, baselines)
    lines += fidelity_section(rc, records, top)
    if final:
        lines += final_section(rc, final, records, baselines)
    lines += ["", "## Hypervolume against evaluations", "",
              f"Hypervolume of everything evaluated so far, at the run's reference point ({fmt_ref(rc.metrics, ref)}; "
              "fixed after generation 0: the worst finite value of each objective plus 10% of its range), the same "
              "point as the console and pareto.png. `python star.py --compare RUN_DIR RUN_DIR ...` compares runs "
              "at one common reference point instead.", "",
              "| generation | evaluations | hypervolume (all evaluated) | hypervolume (population) | front size | offspring "
              "| new front members | repaired | duplicates | failed | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s_ in stats:
        lines.append(f"| {s_['generation']} | {s_.get('evaluated', '')} | {s_.get('hypervolume_archive', math.nan):.6g} | "
                     f"{s_['hypervolume']:.6g} | {s_['front_size']} | {s_.get('offspring', 0)} | {s_.get('new_front', '-')} | "
                     f"{s_.get('repaired', 0)} | "
                     f"{s_.get('duplicates', 0)} | {s_.get('failed', 0)} | {s_.get('wall_s', 0):.1f} |")
    if n_off:
        lines += ["", f"Offspring needing repair: {rep}/{n_off} ({rep / n_off:.0%}); duplicates regenerated: {dup}."]
    idle = [s_["generation"] for s_ in stats if s_.get("generation", 0) > 0 and s_.get("new_front") == 0]
    if idle:
        lines += [f"Generations that brought no new front member: {', '.join(map(str, idle))} (of {len(stats) - 1}); "
                  "`--patience N` stops a run whose hypervolume has not grown for N generations."]
    rates = sharing_rates(records)
    lines += ["", f"Sharing among the {rates['n']} evaluated canonical genomes: featurizer {rates['featurizer']:.0%}, "
                  f"feature groups {rates['feature_group']:.0%}, either {rates['any']:.0%} (D9, D10)."]
    if failed:
        lines += ["", "## Failed candidates", ""] + [f"- `{r['key']}`: {r['status']} {r.get('error', '')}" for r in failed]
    if plot_front(run_dir, rc, baselines, records, ref):
        lines[2:2] = ["![Pareto front](pareto.png)", ""]
    runlog.write_atomic(run_dir / "summary.md", "\n".join(lines) + "\n")


def sharing_rates(records: list[dict]) -> dict:
    """Share of evaluated canonical genomes that use featurizer sharing (D9), feature-group sharing
    (D10), either."""
    ps = [genome.plans(genome.Genome.parse(r["key"])) for r in records]
    feat = [any(p.featurizer_owner != i for i, p in enumerate(q)) for q in ps]
    fg = [any(p.share_owner != i for i, p in enumerate(q)) for q in ps]
    n = max(len(ps), 1)
    return dict(n=len(ps), featurizer=sum(feat) / n, feature_group=sum(fg) / n,
                any=sum(a or b for a, b in zip(feat, fg)) / n)


def final_section(rc: RunConfig, final: list[dict], records: list[dict], baselines: list[dict]) -> list[str]:
    """--final-steps: each retrained genome's mean ± std over the seeds, and how well the search's
    short-budget score ranks them (Spearman between the search score and the retrained mean)."""
    rows = rate_groups(final, "key")
    search_score = {r["key"]: r["perplexity"] for r in records}
    best_lr = {b["name"]: b["lr"] for b in rate_groups(baselines).values()}
    search_score.update({b["key"]: b["perplexity"] for b in baselines if b.get("seed") == rc.seed
                         and b.get("lr") == best_lr[b["name"]]})
    lines = ["", f"## Retrained for {rc.final_steps} steps under seeds {rc.training_seeds()}, each at its best peak rate", "",
             f"Each genome retrains at peak rates {', '.join(f'{lr:.3g}' for lr in rc.rates(rc.final_lrs))} (--final-lrs) "
             "under every seed and is shown at its best rate by seed mean (D41).", "",
             "| | genome | search perplexity | retrained perplexity (mean ± std) | peak lr (seed means) | params | cache |",
             "|---|---|---|---|---|---|---|"]
    pairs = []
    for row in rows.values():
        s_ = search_score.get(row["key"])
        lines.append(f"| {row.get('name') or 'candidate'} | `{row['key']}` | {fmt_ppl(s_)} | {fmt_mean_std(row)} | "
                     f"{rate_words(row)} | {row['params']:,} | {words.fmt_bytes(row['cache_bytes'])} |")
        if s_ is not None and math.isfinite(s_) and math.isfinite(row["perplexity"]):
            pairs.append((s_, row["perplexity"]))
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    lines += ["", f"Proxy fidelity: Spearman rank correlation between the search's score ({rc.steps} steps, one "
                  f"seed) and the retrained mean at the best rate ({rc.final_steps} steps): {rho:.2f} over {len(pairs)} genomes."]
    lines += [f"\n**{w[0].upper()}{w[1:]}**" for w in edge_warnings({r.get("name") or k: r for k, r in rows.items()},
                                                                   "--final-lrs")]
    tpp = rows.get(next((b["key"] for b in baselines if b["name"] == "transformer++"), None))
    if tpp is not None:
        best = min((r for r in rows.values() if not r.get("name")), key=lambda r: r["perplexity"], default=None)
        if best is not None:
            lines += [f"Best retrained candidate against Transformer++: {versus(best, tpp)} perplexity "
                      f"({fmt_mean_std(best)} vs {fmt_mean_std(tpp)})."]
    return lines


AXIS_LABELS = {"params": "parameters", "cache_bytes": "inference cache (bytes, bf16, T={cache_len})",
               "ttft_ms": "time to first token (ms, measured, T={T})", "decode_ms": "decode p50 (ms per token, measured, T={T})",
               "decode_p95_ms": "decode p95 (ms per token, measured, T={T})",
               "memory_bytes": "peak memory (bytes, measured, T={T})"}


def axis_label(m: str, rc: RunConfig) -> str:
    """Words for any metric: built-in, measured at a context (`@T`), a ratio, or a plugin's label."""
    kind, _, ctx = m.partition("@")
    T = ctx or max(rc.deploy_contexts)
    if kind in AXIS_LABELS:
        return AXIS_LABELS[kind].format(cache_len=rc.cache_len, T=T)
    if kind in meter.RATIOS.values():
        return f"{kind.replace('_', ' ')} to Transformer++ (measured, T={T})"
    return plugins.METRICS[m].label if m in plugins.METRICS else m


def _label(ax, xy, text: str, color: str, avoid: np.ndarray, taken: list) -> None:
    """Write `text` next to the point xy where it covers the fewest of the points `avoid` (display
    coordinates) and none of the labels already placed (`taken`, their boxes: appended to): as near
    as that allows, with a leader line when it is not right beside the point."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    style = dict(textcoords="offset points", fontsize=9, color=color, fontweight="bold", zorder=6,
                 bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    best = None
    for dist in (10, 30, 50):  # points from xy
        for angle in (30, 0, 330, 150, 180, 210, 60, 120, 300, 240):  # never straight up or down: the error bar
            dx, dy = dist * math.cos(math.radians(angle)), dist * math.sin(math.radians(angle))
            align = dict(ha="left" if dx > 1 else "right" if dx < -1 else "center",
                         va="bottom" if dy > 1 else "top" if dy < -1 else "center")
            ann = ax.annotate(text, xy, xytext=(dx, dy), **align, **style)
            box = ann.get_window_extent(renderer).padded(7)  # a marker reaches about 7 px from its centre
            ann.remove()
            cost = (sum(box.contains(px, py) for px, py in avoid) + 100 * sum(box.overlaps(t) for t in taken)
                    + 100 * (box.x0 < inside.x0 or box.x1 > inside.x1 or box.y0 < inside.y0 or box.y1 > inside.y1)
                    + dist / 100)  # then the nearest
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), align, box, dist)
    _, offset, align, box, dist = best
    ax.annotate(text, xy, xytext=offset, **align, **style,
                arrowprops=dict(arrowstyle="-", color=color, lw=0.8) if dist > 10 else None)
    taken.append(box)


def plot_front(run_dir: Path, rc: RunConfig, baselines: list[dict], records: list[dict], ref) -> bool:
    """pareto.png, one panel per efficiency objective and one for the hypervolume curve:

    - every finished candidate, coloured by its generation (failed ones have no point to plot);
    - the Pareto front of the candidates in (efficiency, perplexity) as a staircase: everything above
      and to the right of it is dominated;
    - each baseline at its mean perplexity over its training seeds, with a ±1 std bar (D21);
    - hypervolume of everything evaluated so far against the number of evaluations, at the worst
      run's reference point `ref` (fixed after generation 0), stated in the panel;
    - a log cache axis plots max(cache, 1 byte) and says so: a backbone of GMemless alone has a cache
      of 0 bytes.

    matplotlib is imported here, so that the library modules never need it. Returns whether the
    picture was written: not without matplotlib, nor before any candidate has finished."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import BoundaryNorm
        from matplotlib.ticker import EngFormatter, MaxNLocator
    except ImportError:
        return False  # optional; the summary says everything the plot does
    trained = [r for r in records if r.get("status") == "ok" and r.get("perplexity") is not None
               and math.isfinite(r["perplexity"])]
    top = {id(r) for r in fidelity.top_rung(records)}  # D38: the front is the top rung's; the others drawn apart
    ok, low = [r for r in trained if id(r) in top], [r for r in trained if id(r) not in top]
    if not ok:
        return False
    metrics = [m for m in rc.metrics if m != "perplexity"] or ["params"]
    base = [b for b in rate_groups(baselines).values() if math.isfinite(b["perplexity"])]
    n_gen = max(r["generation"] for r in records) + 1
    cmap = plt.get_cmap("viridis", n_gen)
    norm = BoundaryNorm(np.arange(-0.5, n_gen), cmap.N)  # one colour per generation
    styles = [("*", "tab:red", 15), ("D", "tab:orange", 8), ("P", "tab:pink", 10), ("X", "tab:brown", 10)]
    b_style = [styles[i % len(styles)] for i in range(len(base))]  # marker, colour, size of each baseline

    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5.6 * (len(metrics) + 1), 4.8), dpi=120,
                             layout="constrained")
    labels = []  # (axes, xy, name, colour, points to keep clear, the front's corners): placed once the layout is fixed
    for ax, m in zip(axes, metrics):
        x = np.array([r.get(m, math.nan) for r in ok], dtype=float)
        y = np.array([r["perplexity"] for r in ok])
        log_x = x.max() / max(x.min(), 1) > 100  # cache bytes span kB to MB: a log axis, floored at 1 byte
        x = np.maximum(x, 1) if log_x else x
        sc = ax.scatter(x, y, c=[r["generation"] for r in ok], cmap=cmap, norm=norm, s=28, edgecolors="white",
                        linewidths=0.4, zorder=3, label="candidate (colour: generation)")
        if low:
            lx = np.array([r.get(m, math.nan) for r in low], dtype=float)
            ax.scatter(np.maximum(lx, 1) if log_x else lx, [r["perplexity"] for r in low], marker="x", c="0.6", s=16,
                       linewidths=0.8, zorder=2, label="stopped at a lower rung (D38)")
        front = sorted(evolve.non_dominated_sort(np.column_stack([x, y]))[0], key=lambda i: (x[i], y[i]))
        ax.step(x[front], y[front], where="post", color="black", lw=1.4, marker="o", ms=9, mfc="none", zorder=4,
                label="Pareto front" if len(rc.metrics) == 2
                else "Pareto front of the panel's two metrics")
        stair = np.column_stack([np.repeat(x[front], 2)[1:], np.repeat(y[front], 2)[:-1]])  # the step line's corners
        # what a label must not cover: the candidates, the baselines and the ends of their error bars
        pts = np.column_stack([np.r_[x, [b.get(m, math.nan) for b in base for _ in range(3)]],
                               np.r_[y, [b["perplexity"] + k * b["ppl_std"] for b in base for k in (-1, 0, 1)]]])
        for b, (marker, color, size) in zip(base, b_style):
            n = sum(math.isfinite(v) for v in b["ppls"])
            ax.errorbar([b.get(m, math.nan)], [b["perplexity"]], yerr=[b["ppl_std"]], fmt=marker, ms=size, color=color,
                        mec="black", mew=0.6, capsize=4, zorder=5, label=f"{b['name']} ({n} seeds: mean ± std" + ("" if b.get("lr") is None else f"; lr {b['lr']:.3g}") + ")")
            labels.append((ax, (b.get(m, math.nan), b["perplexity"]), b["name"], color, pts, stair))
        if log_x:
            ax.set_xscale("log")
        if m in rc.budgets():  # D35: the budget, and what lies beyond it
            ax.axvline(rc.budgets()[m], color="tab:red", ls="--", lw=1, label="budget")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B" if m.partition("@")[0].endswith("bytes") else ""))
        ax.set_xlabel(axis_label(m, rc)
                      + ("; log axis, max(x, 1) plotted" if log_x and (x == 1).any() else ""))
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
        ax.margins(0.06, 0.1)  # room for the labels at the edges
    fig.colorbar(sc, ax=list(axes[:len(metrics)]), ticks=range(0, n_gen, -(-n_gen // 10)), label="generation",
                 pad=0.02, aspect=30)

    curve = archive_hypervolume_curve(records, ref)
    ax = axes[-1]
    ax.plot([n for _, n, _ in curve], [hv for _, _, hv in curve], "o-", color="tab:blue")
    for g, n, hv in curve[::max(1, len(curve) // 8)]:  # below and right: the curve only rises
        ax.annotate(f"gen {g}", (n, hv), xytext=(5, -4), textcoords="offset points", ha="left", va="top", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume")
    ax.set_title("hypervolume of all candidates evaluated so far", fontsize=10)
    ax.text(0.98, 0.03, "the run's reference point:\n" + fmt_ref(rc.metrics, ref),
        transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.15)  # room for the last label

    failed = len(records) - len(trained)
    shares = "" if not rc.budgets() else "\nbudgets " + ", ".join(f"{m} ≤ {fmt_value(m, v)}" for m, v in rc.budgets().items()) \
        + "; within them per generation: " + " ".join(f"{k / n:.0%}" for _, n, k in feasible_shares(rc, records))
    fig.suptitle(f"STAR {rc.objective}: {rc.preset} preset, {rc.algorithm}, "
                 f"{len(records)} candidates: generation 0 and {n_gen - 1} more"
                 + (f" ({failed} failed, not shown)" if failed else "") + shares)
    handles = axes[0].get_legend_handles_labels()
    fig.legend(*handles, loc="outside lower center", ncol=min(len(handles[0]), 3), frameon=False)
    fig.draw_without_rendering()  # fixes the layout, so that labels can be placed where they cover no point
    taken = []
    for ax, xy, name, color, pts, stair in labels:
        c = ax.transData.transform(stair)  # and the front: a point every 15 px along it
        along = [a + (b - a) * t for a, b in zip(c[:-1], c[1:])
                 for t in np.linspace(0, 1, 2 + int(np.hypot(*(b - a)) / 15))]
        _label(ax, xy, name, color, np.concatenate([ax.transData.transform(pts), np.reshape(along, (-1, 2))]), taken)
    fig.set_layout_engine("none")  # keep that layout (the labels lie inside the panels); saves a second layout pass
    tmp = run_dir / "pareto.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, run_dir / "pareto.png")  # a kill never leaves half a picture
    return True


def load_run(run_dir: str | Path) -> tuple[RunConfig, list[dict], list[dict]]:
    """(config, archive records, baseline records) of a run folder, read without writing anything."""
    d = Path(run_dir)
    if not (d / "config.json").is_file() or not (d / "archive.jsonl").is_file():
        raise UsageError(f"{d} holds no run (needs config.json and archive.jsonl)")
    try:
        rc = RunConfig.from_json((d / "config.json").read_text(), str(d / "config.json"))
        records = runlog.parse_jsonl(d / "archive.jsonl")[0]
        baselines = runlog.parse_jsonl(d / "baselines.jsonl")[0]
        if not all(isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("objectives"), list)
                   and isinstance(r.get("generation"), int) for r in records):
            raise ValueError(f"{d / 'archive.jsonl'} holds a line that is not an archive record")
    except (ValueError, OSError) as e:
        raise UsageError(f"{d}: cannot read the run: {e}") from None
    return rc, runlog.newest_records(records)[0], runlog.at_run_rate(baselines, rc.lr)  # a re-evaluated timeout counts once (D23)


def comparable_key(rc: RunConfig) -> dict:
    """What two runs must share for their hypervolumes to be compared: the data (its fingerprint; the
    --data option where an older run did not record it), the model's shape, the training compute per
    candidate and how quality and cache are measured. The search itself (algorithm, seed, sizes,
    variation) is what a comparison is for, and may differ."""
    return {"data": rc.data_fingerprint or f"--data {rc.data or 'default corpus'} (no fingerprint recorded)",
            "width": f"d_model {rc.d_model}, head_dim {rc.head_dim}, depth {rc.depth}",
            "training compute": f"{rc.steps} steps x {rc.batch} x {rc.seq_len} tokens per candidate",
            "evaluation": f"{rc.eval_tokens} held-out tokens, cache at T = {rc.cache_len}"}


def compare_runs(run_dirs: list[str], allow_incomparable: bool = False) -> tuple[str, list[dict]]:
    """Hypervolume against evaluations for several runs at ONE reference point: the worst finite value
    of every objective over all the runs plus 10% of its range (evaluation.default_ref_point), so that the
    numbers are comparable across runs. Also each run's hypervolume after the number of evaluations the
    shortest run made, its ratio to the first run's, its sharing rates and its repair rate.

    Refused (UsageError, one line): runs of different objectives (no common objective space), a run with
    no evaluation, and runs that differ in `comparable_key` (other data, width, compute per candidate or
    measurement) unless `allow_incomparable` (--allow-incomparable), when the output says so first."""
    runs = [(str(d), *load_run(d)) for d in run_dirs]
    objectives = {rc.objective for _, rc, _, _ in runs}
    if len(objectives) != 1:
        raise UsageError(f"--compare: the runs optimise different objectives ({', '.join(sorted(objectives))})")
    empty = next((d for d, _, recs, _ in runs if not recs), None)
    if empty is not None:
        raise UsageError(f"--compare: {empty} has no evaluation yet (stopped before its first candidate); "
                         "continue it with --resume, or leave it out")
    first, differ = comparable_key(runs[0][1]), []
    for d, rc, _, _ in runs[1:]:
        differ += [f"{k} of {d}: {v} (not {first[k]})" for k, v in comparable_key(rc).items() if v != first[k]]
    warning = []
    if differ and not allow_incomparable:
        raise UsageError(f"--compare: the runs are not comparable: {'; '.join(differ)}; compare runs of the same "
                         "data, width and budget, or pass --allow-incomparable to compare them anyway")
    if differ:
        warning = [f"NOT COMPARABLE (--allow-incomparable): {'; '.join(differ)}", ""]
    F = np.array([[math.inf if v is None else v for v in r["objectives"]] for _, _, recs, _ in runs
                  for r in fidelity.top_rung(recs)], dtype=float)  # D38: a lower rung's scores are not comparable
    if not np.isfinite(F).all(axis=1).any():
        raise UsageError("--compare: no run has a finished candidate")
    ref = evaluation.default_ref_point(F)
    n_common = min(len(recs) for _, _, recs, _ in runs)
    lines = warning + [
             f"common reference point of these runs (not each run's own): {fmt_ref(metrics_of(objectives.pop()), ref)} "
             f"({', '.join(f'{x:.6g}' for x in ref)})", "",
             "run | algorithm | seed | generation | evaluations | hypervolume"]
    rows = []
    for d, rc, recs, _ in runs:
        for g, n, hv in archive_hypervolume_curve(recs, ref):
            lines.append(f"{d} | {rc.algorithm} | {rc.seed} | {g} | {n} | {hv:.6g}")
        head = recs[:n_common]
        F_head = np.array([[math.inf if v is None else v for v in r["objectives"]] for r in fidelity.top_rung(head)],
                          dtype=float).reshape(-1, len(ref))
        offspring = [r for r in head if r["generation"] > 0]  # everything below over the same evaluations
        rows.append(dict(run=d, algorithm=rc.algorithm, seed=rc.seed, evaluations=n_common,
                         hypervolume=evaluation.hypervolume(F_head, ref),
                         repaired=sum(r.get("repairs", 0) > 0 for r in offspring) / max(len(offspring), 1),
                         **{f"share_{k}": v for k, v in sharing_rates(head).items() if k != "n"}))
    lines += ["", f"at {n_common} evaluations (the shortest run's count; sharing and repair over those evaluations):",
              "run | algorithm | seed | hypervolume | ratio to the first run | featurizer sharing | feature-group "
              "sharing | either | offspring repaired"]
    for r in rows:
        ratio = r["hypervolume"] / rows[0]["hypervolume"] if rows[0]["hypervolume"] > 0 else math.nan
        r["ratio"] = ratio
        lines.append(f"{r['run']} | {r['algorithm']} | {r['seed']} | {r['hypervolume']:.6g} | {ratio:.3f} | "
                     f"{r['share_featurizer']:.0%} | {r['share_feature_group']:.0%} | {r['share_any']:.0%} | {r['repaired']:.0%}")
    return "\n".join(lines), rows
