"""Pictures and tables of the option pool and of genomes (D8), and the small command lines that print
them: `python genome.py ...` and `python liv.py ...` hand over to `genome_main` and `liv_main` here.

    python genome.py --classes                         # the option pool: featurizer and operator genomes
    python genome.py 1.1.1.1.1-9.2.1.2.1 --d-model 768  # a genome's picture, parameters and cache
    python genome.py --baseline transformer++ --depth 24
    python liv.py --d-model 768                        # each class's parameters and cache at a width
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
import torch

import liv
from genome import (BASELINES, FEATURIZER_STRATEGIES, FG_STRATEGIES, Genome, _fmt_allowed, cache_bytes, canonical_str,
                    count_params, legal_fg_strategies, plans, random_genome)
from workshop.space import repeat
from workshop.words import OneLineParser, seed_arg


def option_pool_table(cfg: liv.ModelConfig, T: int = 4096) -> str:
    rows = [f"{'id':>3}  {'name':<13} {'operator':<8} {'family':<8} {'params/LIV':>11} {'cache bytes @T=' + str(T):>20}"]
    for cid, spec in liv.REGISTRY.items():
        with torch.device("meta"):
            m = liv.make_liv(cfg, cid, 0)
        params = sum(p.numel() for p in m.parameters())
        cache = liv.DecodeCache([m.new_cache(1, T, torch.bfloat16, "meta")]).nbytes()
        rows.append(f"{cid:>3}  {spec.name:<13} {spec.operator:<8} {spec.family:<8} {params:>11,} {cache:>20,}")
    return "\n".join(rows)


def liv_main(argv=None) -> int:
    ap = OneLineParser(prog="liv.py", description="Print STAR's LIV option pool (DESIGN.md §3.1) at a given width.")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--cache-len", type=int, default=4096, help="context T for the cache column (D7)")
    args = ap.parse_args(argv)
    try:
        if args.cache_len < 1:
            raise ValueError(f"--cache-len must be >= 1 (got {args.cache_len})")
        cfg = liv.ModelConfig(d_model=args.d_model, head_dim=args.head_dim, max_len=args.cache_len)
    except ValueError as e:
        print(f"liv.py: error: {e}", file=sys.stderr)
        return 2
    print(f"d_model={cfg.d_model}, heads={cfg.n_heads}x{cfg.head_dim}, ffn_hidden={cfg.ffn_hidden}, "
          f"bf16 cache, batch 1")
    print(option_pool_table(cfg, args.cache_len))
    return 0


_TOKEN_MIXING = {1: "diagonal", 2: "low-rank", 3: "Toeplitz", 4: "SSS"}


_SPARSITY = {1: "none", 2: "banded"}


_NONLIN = {1: "none", 2: "softmax", 3: "relu", 4: "silu", 5: "softplus"}


_CHANNEL = {1: "diagonal", 2: "dense", 3: "grouped"}


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned text columns, two spaces apart."""
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
    return ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def explain_classes() -> str:
    """The option pool as text: operator genome and featurizer genome of each class (D4, D8)."""
    reg = liv.REGISTRY
    op_rows = []
    for cid, c in reg.items():
        d = [int(ch) for ch in c.operator]
        op_rows.append((f"{cid:>2}", c.name, c.shorthand, c.operator, c.family, "yes" if c.differential else "no",
                        _TOKEN_MIXING[d[1]], _SPARSITY[d[2]], _NONLIN[d[3]], _CHANNEL[d[4]],
                        _fmt_allowed(legal_fg_strategies(cid))))
    feat_rows = []
    for cid, c in reg.items():
        for k, (grp, (tm, sp, nl, cm, ex, rep)) in enumerate(c.featurizer.items()):
            first = k == 0
            feat_rows.append((f"{cid:>2}" if first else "", c.name if first else "", grp, _TOKEN_MIXING[tm],
                              _SPARSITY[sp], _NONLIN[nl], _CHANNEL[cm], ex if isinstance(ex, str) else f"{ex:.3g}", str(rep)))
    lines = ["Operator genome (fixed per class, D4): featurizer class, token mixing, sparsity, nonlinearity, "
             "channel mixing; the last column lists the legal feature-group strategies (D6, D10)"]
    lines += _table(("id", "name", "short", "operator", "family", "diff", "token mixing", "sparsity", "nonlinearity",
                     "channel mixing", "fg strategies"), op_rows)
    lines += ["", "Featurizer genome (fixed per class and feature group, D8): expansion = output width / d, "
                  "repeat = query heads per key/value head"]
    lines += _table(("id", "name", "group", "token mixing", "sparsity", "nonlinearity", "channel mixing",
                     "expansion", "repeat"), feat_rows)
    lines += ["", "Backbone genome (evolved): one 5-tuple per LIV",
              "  1 class 1-17 · 2 featurizer group 1-depth · 3 featurizer strategy: "
              + " · ".join(f"{k} {v}" for k, v in FEATURIZER_STRATEGIES.items()),
              "  4 feature-group group 1-depth · 5 feature-group strategy: "
              + " · ".join(f"{k} {v}" for k, v in FG_STRATEGIES.items())]
    return "\n".join(lines)


def _lane_columns(owner_of: Sequence[int]) -> list[str]:
    """ASCII lanes for one sharing level: a vertical line from each owner down to its last sharer.

    Overlapping groups get separate lanes (greedy interval colouring), like `git log --graph`.
    """
    n = len(owner_of)
    groups: dict[int, list[int]] = {}
    for i, o in enumerate(owner_of):
        if o != i:
            groups.setdefault(o, []).append(i)
    lane_end: list[int] = []  # last row of the group currently in each lane
    lane_of: dict[int, int] = {}
    for o in sorted(groups):
        free = [k for k, end in enumerate(lane_end) if end < o]
        k = free[0] if free else len(lane_end)
        if k == len(lane_end):
            lane_end.append(-1)
        lane_end[k] = groups[o][-1]
        lane_of[o] = k
    cols = [[" "] * len(lane_end) for _ in range(n)]
    for o, members in groups.items():
        k = lane_of[o]
        cols[o][k] = "┬"
        for i in range(o + 1, members[-1] + 1):
            cols[i][k] = ("└" if i == members[-1] else "├") if i in members else "│"
    for i, o in enumerate(owner_of):
        if o != i:  # lead the sharer's arm right, towards its note, through empty lanes
            k = lane_of[o]
            cols[i][k + 1:] = ["─" if ch == " " else ch for ch in cols[i][k + 1:]]
    return ["".join(c) for c in cols]


def describe(g: Genome) -> str:
    """A text picture of the backbone, one line per LIV, with the sharing links drawn between LIVs."""
    ps = plans(g)
    f_lanes = _lane_columns([p.featurizer_owner for p in ps])
    s_lanes = _lane_columns([p.share_owner for p in ps])
    rows = []
    for i, p in enumerate(ps):
        c = liv.REGISTRY[p.class_id]
        f_note = f" weights of {p.featurizer_owner + 1}" if p.featurizer_owner != i else ""
        groups = ",".join(x for x in "CBV" if x in p.shared_groups)
        s_note = f" {groups} from {p.share_owner + 1}" if p.share_owner != i else ""
        rows.append((f"{i + 1:>3}", c.name, c.shorthand, ".".join(map(str, g.livs[i])),
                     f_lanes[i] + f_note, s_lanes[i] + s_note))
    head = ("LIV", "class", "short", "genome", "featurizer (D9)", "feature groups (D10)")
    lines = [f"genome {g}  (depth {g.depth}, canonical {canonical_str(g)})"]
    lines += _table(head, rows)
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2, no usage dump
        print(f"genome.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


CLI_MAX_DEPTH = 1000  # the command line describes and counts a genome in seconds up to this depth


def genome_main(argv: Sequence[str] | None = None) -> int:
    ap = _Parser(description="Print, check and describe STAR backbone genomes (D8-D15).")
    ap.add_argument("genome", nargs="?", help="e.g. 1.1.1.1.1-9.2.1.2.1 or the compact 11111-92121")
    ap.add_argument("--random", type=int, metavar="DEPTH", help="print a random valid genome of this depth")
    ap.add_argument("--seed", type=seed_arg, default=0, help="seed for --random (0 <= seed < 2**63)")
    ap.add_argument("--baseline", choices=sorted(BASELINES), help="print a baseline genome (needs --depth)")
    ap.add_argument("--classes", "--explain", action="store_true", help="print the option pool tables (D8)")
    ap.add_argument("--depth", type=int, help="depth for --baseline (a genome's depth is inferred)")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--no-params", action="store_true", help="skip the parameter count")
    ap.add_argument("--repeat", type=int, default=1, metavar="TIMES",
                    help="scale depth: TIMES independent copies of the genome, one after another (D26)")
    ap.add_argument("--share-across", action="store_true",
                    help="with --repeat: later copies use the first copy's featurizer weights (D26)")
    args = ap.parse_args(argv)

    try:
        if args.classes:
            print(explain_classes())
            if args.genome is None and args.random is None and args.baseline is None:
                return 0
        picked = sum(x is not None for x in (args.genome, args.random, args.baseline))
        if picked != 1:
            ap.error("give exactly one of GENOME, --random DEPTH, --baseline NAME (or --classes)")
        for opt, v in (("--random", args.random), ("--depth", args.depth)):
            if v is not None and not 1 <= v <= CLI_MAX_DEPTH:
                ap.error(f"{opt} {v}: depth must be in 1..{CLI_MAX_DEPTH}")
        if args.random is not None:
            g = random_genome(args.random, np.random.default_rng(args.seed))
        elif args.baseline is not None:
            if args.depth is None:
                ap.error("--baseline needs --depth N")
            g = BASELINES[args.baseline](args.depth)
        else:
            g = Genome.parse(args.genome)
            if args.depth is not None and args.depth != g.depth:
                ap.error(f"--depth {args.depth} disagrees with the genome's {g.depth} LIVs")
        if args.repeat != 1 or args.share_across:
            if args.repeat < 1 or args.repeat * g.depth > CLI_MAX_DEPTH:
                ap.error(f"--repeat {args.repeat}: must be >= 1, and the repeated depth at most {CLI_MAX_DEPTH}")
            print(f"{g} repeated {args.repeat} times ({'featurizers shared across copies' if args.share_across else 'independent copies'}):")
            g = repeat(g, args.repeat, args.share_across)
        cfg = None if args.no_params else liv.ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model,
                                                          depth=g.depth, head_dim=args.head_dim)
        print(describe(g))
        if cfg is not None:
            n = count_params(g, cfg)
            print(f"parameters: {n['total']:,} ({_human(n['total'])}), non-embedding {n['non_embedding']:,} "
                  f"({_human(n['non_embedding'])})  [d_model {cfg.d_model}, vocab {cfg.vocab_size}]")
            print(f"cache: {cache_bytes(g, cfg):,} bytes (bf16, batch 1, T = 4096; D7)")
    except ValueError as e:
        print(f"genome.py: error: {e}", file=sys.stderr)
        return 2
    return 0
