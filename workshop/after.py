"""After the search: the winner in your hands (workshop tier; DESIGN.md D24-D28).

A finished run folder holds, beside its archive, the weights of its selection (`weights/`, written by
star.py at the end of every run, D24). From there:

    python -m workshop.after pick RUN                                   # the selection, its weights, what to do next
    python -m workshop.after retrain RUN --genome best --steps 1000 --seeds 0 1 2      # any steps and seeds, later
    python -m workshop.after retrain RUN --genome best --repeat 2 --d-model 128        # scaled (D26), counts first
    python -m workshop.after retrain RUN --genome 1.1.1.1.1-9.2.1.2.1-5.3.1.3.1-9.4.1.4.1   # any genome, the run's settings
    python -m workshop.after export RUN/weights/gXXXXXXXXXX             # torch.export programs, loaded by torch alone (D28)
    python train.py --sample RUN/weights/gXXXXXXXXXX --prompt "ROMEO:"       # cached decoding
    python train.py --resume RUN/weights/gXXXXXXXXXX --extend 1000 --save more.pt   # keep training (D27)

and from Python, in two lines:

    from workshop import after
    model = after.load("runs/quality_cache-cpu-seed0")         # rank 1 of the selection (rank=k: the k-th)

`retrain` reads the run and writes only under `--out` (default RUN/retrained): the archive, the
snapshots and the config of the run are never touched, and a running star.py may hold the folder.
It trains the way the search trained (candidate.evaluate_genome, one thread on CPU), so the best
genome at the run's own steps and seed reproduces its archived perplexity exactly.

`train.py --from-run RUN`, as the issue spelled it, would make train.py (the reference tier) read
config.json, whose format and identity rule belong to config.py; reading a run is the workshop's
job, so it is `python -m workshop.after retrain RUN --genome G|best` here (D24).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch

import corpus
import genome
import liv
import train
from workshop import candidate, cli, parallel, plugins, report, runlog, space, training, userdata, words
from workshop.config import RunConfig, UsageError

# ----------------------------------------------------------------------------------------------------
# Reading a run (read-only)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A run folder as it stands: its configuration, archive, baselines and selection."""
    path: Path
    config: RunConfig
    records: list[dict]
    baselines: list[dict]
    top: list[dict]          # the paper's selection (star.select_top_k), archive records
    weights: list[dict]      # weights/top.json: rank, genome, key, folder, reproduced, final (empty: none kept)


def _rows(path: Path) -> list[dict]:
    """A record file read without repairing it (runlog.parse_jsonl writes nothing); null metrics as inf."""
    rows, _, _ = runlog.parse_jsonl(path)
    return [{k: (math.inf if k in runlog.INF_FIELDS and v is None else v) for k, v in r.items()} for r in rows]


def read_run(path) -> Run:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a run folder (no config.json)")
    config = RunConfig.from_json((path / "config.json").read_text(), str(path / "config.json"))
    try:
        records, baselines = _rows(path / "archive.jsonl"), _rows(path / "baselines.jsonl")
    except ValueError as e:
        raise UsageError(str(e)) from None
    tpp = report.rate_groups(runlog.at_run_rate(baselines, config.lr)).get("transformer++")
    top = report.select(records, tpp, config.objective, config.final_top, config.within_budgets)
    index = path / "weights" / "top.json"
    weights = json.loads(index.read_text()) if index.is_file() else []
    return Run(path, config, records, baselines, top, weights)


def weights_path(path, rank: int = 1) -> Path:
    """A weights folder or checkpoint as given, or a run folder's rank-th selected weights (weights/top.json)."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file() and (path / "archive.jsonl").exists():  # a run folder
        kept = {w["rank"]: w["folder"] for w in read_run(path).weights}
        if rank not in kept:
            raise UsageError(f"{path} keeps weights for ranks {', '.join(map(str, kept))}, not {rank}"
                             if kept else f"{path} kept no weights: resume it with --resume --weights")
        path = path / kept[rank]
    return path


def load(path, rank: int = 1, device: str = "cpu") -> torch.nn.Module:
    """The model (eval mode) of a run folder's rank-th selected genome, of a weights folder, or of a
    checkpoint file."""
    found = weights_path(path, rank)
    about = candidate.read_weights(found if found.is_dir() else found.parent) or {}
    try:
        plugins.load(about.get("plugins") or ())  # a plugin's LIV classes (D37), before the model is built
        return training.load_checkpoint(found, device)[0]
    except ImportError as e:
        raise UsageError(f"{found} was made with the plugin {e.name or e}, which cannot be imported: {e}") from None
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None


def pick(run_dir) -> str:
    """The selection of a run, with its weights and the commands to go on."""
    run = read_run(run_dir)
    kept = {w["key"]: w for w in run.weights}
    lines = [f"{run.path}: {len(run.records)} candidates, objective {run.config.objective}; the selection "
             f"(top {run.config.final_top} smaller than Transformer++, by perplexity):",
             f"{'rank':>4}  {'perplexity':>10}  {'params':>9}  {'cache':>9}  {'reproduced':>10}  weights  genome"]
    for rank, r in enumerate(run.top, 1):
        w = kept.get(r["key"], {})
        lines.append(f"{rank:>4}  {r['perplexity']:>10.3f}  {r['params']:>9,}  {words.fmt_bytes(r['cache_bytes']):>9}  "
                     f"{str(w.get('reproduced', '-')):>10}  {w.get('folder', '-')}  {r['key']}"
                     + (f"  (final: {', '.join(w['final'])})" if w.get("final") else ""))
    if not run.top:
        lines.append("   (no candidate is smaller than Transformer++)")
    elif run.weights:
        best = run.path / run.weights[0]["folder"]
        lines += ["", f"python -m workshop.after retrain {run.path} --genome best --steps 1000 --seeds 0 1 2",
                  f"python -m workshop.after export {best}", f"python train.py --sample {best} --prompt 'ROMEO:'",
                  f"python train.py --resume {best} --extend 1000 --save more.pt"]
    else:
        lines += ["", "no weights kept: python star.py <the run's options> --resume --weights"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Retraining a run's genomes later: any steps, seeds, depth and width (D24, D26)
# ----------------------------------------------------------------------------------------------------


def chosen(run: Run, which: str) -> list[genome.Genome]:
    """best | topK (the K-th of the selection) | top (all of it) | a genome string."""
    if which in ("best", "top") or (which.startswith("top") and which[3:].isdigit()):
        if not run.top:
            raise UsageError(f"{run.path}: no selected genome (none is smaller than Transformer++); give a genome")
        k = 1 if which == "best" else None if which == "top" else int(which[3:])
        if k is not None and not 1 <= k <= len(run.top):
            raise UsageError(f"--genome {which}: the selection has ranks 1..{len(run.top)}")
        return [genome.Genome.parse(r["key"]) for r in (run.top if k is None else [run.top[k - 1]])]
    try:
        return [genome.Genome.parse(which)]
    except ValueError as e:
        if not any(ch.isdigit() for ch in which):  # a word, not a genome: name the words there are
            raise UsageError(f"--genome {which!r}: choose best, top, topK (top3: the third of the selection) "
                             "or a genome string such as 9.1.1.1.1-8.2.1.2.1") from None
        raise UsageError(f"--genome {which!r} is not best, top, topK or a genome: {e}") from None


def retrain(run_dir, which: str = "best", steps: Optional[int] = None, seeds: Optional[list[int]] = None,
            repeat: int = 1, share_across: bool = False, d_model: Optional[int] = None, out=None,
            device: str = "auto", log=print, lr: Optional[float] = None) -> list[dict]:
    """Train genomes of a finished run again with the run's settings (data, widths, batch, schedule)
    but any steps, seeds, depth (`repeat`), width (`d_model`) and peak rate (`lr`, default the run's);
    each trained model's weights go to `out`/<name>/ and its record to `out`/results.jsonl. The run's
    own files are only read."""
    run = read_run(run_dir)
    config = run.config
    steps, seeds = steps or config.steps, seeds if seeds is not None else [config.seed]
    out = Path(out).expanduser() if out is not None else run.path / "retrained"
    try:
        device = str(train.resolve_device(device))
        data = userdata.load_data(config.data, config.vocab_size)
        data.check(config.seq_len)
    except (ValueError, corpus.DataError) as e:
        raise UsageError(str(e)) from None
    width = d_model or config.d_model
    if lr is not None and not (math.isfinite(lr) and 0 < lr < 1):
        raise UsageError(f"--lr must be a peak learning rate > 0 and < 1 (got {lr})")
    tcfg = dataclasses.replace(config.train_config(device, steps), lr=lr or config.lr)  # one rate (D41)
    results = []
    for base in chosen(run, which):
        g = space.repeat(base, repeat, share_across) if (repeat != 1 or share_across) else base
        try:
            cfg = dataclasses.replace(config.model_config(data.vocab_size), d_model=width, depth=g.depth, ffn_hidden=0)
        except ValueError as e:
            raise UsageError(str(e)) from None
        costs = candidate.describe_costs(g, cfg, config.cache_len)
        log(f"{g}: depth {g.depth}, width {width}: {costs['params']:,} parameters ({costs['non_embedding_params']:,} "
            f"non-embedding), cache {costs['cache_bytes']:,} bytes at T = {config.cache_len}; {steps} steps at peak lr "
            f"{tcfg.lr:.3g}, seeds "
            f"{', '.join(map(str, seeds))}")
        for seed in seeds:
            name = (f"{candidate.weights_name(genome.canonical_str(g))}-d{width}-steps{steps}-seed{seed}"
                    + ("" if tcfg.lr == config.lr else f"-lr{tcfg.lr:.3g}"))

            def keep(model, state, info, tcfg_used, folder=out / name, g=g, seed=seed):
                candidate.save_weights(folder, model, state, info, g, model.cfg, tcfg_used, config, kind="retrained",
                                       seed=seed, steps=steps, run=str(run.path), repeat=repeat, share_across=share_across)
            with parallel.candidate_threads(device):  # as the search trained: same arithmetic (D19)
                info, _ = candidate.evaluate_genome(g, cfg, tcfg, data, config, seed=seed, keep=keep, lr_grid=())
            rec = dict(genome=str(g), key=genome.canonical_str(g), base=str(base), repeat=repeat, share_across=share_across,
                       d_model=width, steps=steps, seed=seed, folder=str(out / name), **info)
            out.mkdir(parents=True, exist_ok=True)
            results.append(runlog.append_record(out / "results.jsonl", rec))
            log(f"  seed {seed}: {runlog.progress_words(rec)} -> {out / name}")
        mine = [r for r in results if r["key"] == genome.canonical_str(g)]
        if len(mine) > 1:
            m, s = report.mean_std([r["perplexity"] for r in mine])
            log(f"  perplexity {m:.3f} ± {s:.3f} over {len(mine)} seeds")
    return results


# ----------------------------------------------------------------------------------------------------
# Export (D28): torch.export programs that run with torch alone
# ----------------------------------------------------------------------------------------------------


class DecodeStep(torch.nn.Module):
    """One decoding step with an explicit cache, as a function: (token (b, 1), pos (), *cache) ->
    (logits (b, vocab), *cache after the step). The cache tensors are those of liv.DecodeCache, in a
    fixed order (`names`); values that depend on the weights alone (GConv-2's filter taps) are computed
    once here and become constants of the program."""

    def __init__(self, model: liv.Backbone, batch: int, context: int):
        super().__init__()
        self.model, self.context = model, context
        template = model.new_cache(batch, context)
        with torch.no_grad():  # fills the weight-only entries ("_filter") once
            model(torch.zeros(batch, 1, dtype=torch.long, device=model.embed.weight.device), template)
        self.names = [(i, k) for i, layer in enumerate(template.layers) for k in layer if not k.startswith("_")]
        self.fixed = [{k: v for k, v in layer.items() if k.startswith("_")} for layer in template.layers]
        self.shapes = [tuple(template.layers[i][k].shape) for i, k in self.names]
        self.dtypes = [template.layers[i][k].dtype for i, k in self.names]

    def empty_cache(self) -> list[torch.Tensor]:
        return [torch.zeros(s, dtype=d) for s, d in zip(self.shapes, self.dtypes)]

    def forward(self, token, pos, *cache):
        p = pos.item()
        torch._check(p >= 0)
        torch._check(p < self.context)
        layers = [dict(f) for f in self.fixed]
        new = [t.clone() for t in cache]  # a function of its inputs: the caller's cache is left as it was
        for (i, k), t in zip(self.names, new):
            layers[i][k] = t
        logits = self.model(token, liv.DecodeCache(layers, pos=p))[:, -1]
        return (logits, *new)


EXPORT_FORMAT = "star-export-1"


def export(source, out=None, batch: int = 1, context: Optional[int] = None, step: bool = True, log=print) -> dict:
    """Write `out`/forward.pt2 (logits of a whole sequence: batch and length dynamic, 1..max_len) and,
    with `step`, `out`/step.pt2 (one decoding step with an explicit cache of `context` positions, for
    `batch` sequences), each loadable with torch.export.load alone, and `out`/export.json (how to call
    them). Both are checked here against the model; the numbers go into export.json."""
    src = weights_path(source)
    model = load(src).cpu().eval()
    cfg = model.cfg
    out = Path(out).expanduser() if out is not None else (src if src.is_dir() else src.parent) / "export"
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    dims = {"idx": {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("length", min=1, max=cfg.max_len)}}
    with torch.no_grad():
        x = torch.randint(0, cfg.vocab_size, (2, min(cfg.max_len, 67)), generator=gen)
        program = torch.export.export(model, (x,), dynamic_shapes=dims)
        checks = [torch.randint(0, cfg.vocab_size, (b, l), generator=gen) for b, l in ((1, 1), (3, min(cfg.max_len, 130)))]
        diff = max(float((program.module()(c) - model(c)).abs().max()) for c in checks)
    torch.export.save(program, out / "forward.pt2")
    text = genome.canonical_str(genome.Genome.parse(training.read_checkpoint(src)["genome"]))  # older folders: as bred
    about = dict(format=EXPORT_FORMAT, genome=text, model_config=cfg.to_dict(), vocab_size=cfg.vocab_size,
                 forward=dict(file="forward.pt2", inputs="idx: int64 (batch, length), 1 <= length <= max_len",
                              outputs="logits: float32 (batch, length, vocab_size)", max_abs_diff=diff))
    log(f"forward.pt2: dynamic batch and length 1..{cfg.max_len}; max |logits - model| = {diff:.2e}")
    if step:
        about["step"] = _export_step(model, out, batch, context or cfg.max_len, gen, log)
    (out / "export.json").write_text(json.dumps(about, indent=2) + "\n")
    return about


def _export_step(model, out: Path, batch: int, context: int, gen, log) -> dict:
    cfg = model.cfg
    dec = DecodeStep(model, batch, context)
    with torch.no_grad():
        program = torch.export.export(dec, (torch.zeros(batch, 1, dtype=torch.long), torch.tensor(0), *dec.empty_cache()))
        n = min(context, 24)
        x = torch.randint(0, cfg.vocab_size, (batch, n), generator=gen)
        cache, outs, run = dec.empty_cache(), [], program.module()
        for t in range(n):
            logits, *cache = run(x[:, t:t + 1], torch.tensor(t), *cache)
            outs.append(logits)
        diff = float((torch.stack(outs, 1) - model(x)).abs().max())
    torch.export.save(program, out / "step.pt2")
    log(f"step.pt2: batch {batch}, a cache of {context} positions ({len(dec.names)} tensors); {n} steps against the "
        f"parallel logits: max |diff| = {diff:.2e}")
    return dict(file="step.pt2", batch=batch, context=context,
                inputs="token: int64 (batch, 1), pos: int64 (), then the cache tensors in order (zeros to start)",
                outputs="logits: float32 (batch, vocab_size), then the cache after the step",
                cache=[dict(name=f"{i}.{k}", shape=list(s), dtype=str(d).removeprefix("torch."))
                       for (i, k), s, d in zip(dec.names, dec.shapes, dec.dtypes)], max_abs_diff=diff)


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = words.OneLineParser(prog="python -m workshop.after", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=words.OneLineParser)
    p = sub.add_parser("pick", help="the selection of a run and its weights")
    p.add_argument("run")
    p = sub.add_parser("retrain", help="train a run's genomes again: any steps, seeds, depth, width")
    p.add_argument("run")
    p.add_argument("--genome", default="best", help="best | topK | top (all selected) | a genome string (default best)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the run's)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the run's)")
    p.add_argument("--repeat", type=int, default=1, help="depth: this many independent copies of the genome (D26)")
    p.add_argument("--share-across", action="store_true", help="with --repeat: featurizers tied across copies")
    p.add_argument("--d-model", type=int, default=None, help="width (default: the run's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the run's; longer training "
                   "and wider models want a lower one: DESIGN.md D41)")
    p.add_argument("--out", default=None, help="folder for the weights and results.jsonl (default RUN/retrained)")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("export", help="torch.export programs of a weights folder, checkpoint or run (its best)")
    p.add_argument("source")
    p.add_argument("--out", default=None, help="folder (default: SOURCE/export)")
    p.add_argument("--batch", type=int, default=1, help="sequences of the decoding step (default 1)")
    p.add_argument("--context", type=int, default=None, help="cache positions of the decoding step (default max_len)")
    p.add_argument("--no-step", action="store_true", help="only the forward program")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pick":
            print(pick(args.run))
        elif args.command == "retrain":
            if args.repeat < 1 or (args.steps is not None and args.steps < 1):
                raise UsageError("--repeat and --steps must be >= 1")
            retrain(args.run, args.genome, args.steps, args.seeds, args.repeat, args.share_across, args.d_model,
                    args.out, args.device, lr=args.lr)
        else:
            if args.batch < 1 or (args.context is not None and args.context < 1):
                raise UsageError("--batch and --context must be >= 1")
            export(args.source, args.out, args.batch, args.context, step=not args.no_step)
    except UsageError as e:
        print(f"workshop.after: error: {cli._one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
