"""STAR, the whole synthesis (the paper's Figure 1; evolution §4, experiments §5): the reference, in memory.

    import star
    result = star.synthesize(star.Config.make("cpu"))   # the baselines, NSGA-II, the selection
    result.top, result.front, result.baselines              # archive records (dicts)

One loop, four steps, each in one place:

1. **The baselines** (§5): Transformer++ and StripedMamba at the search's depth, trained under the
   same budget as every candidate, under several training seeds (D15, D21) and at several peak rates;
   each is compared at its best rate (`at_best_rate`, D41).
2. **The initial population**: random genomes (genome.random_genome), repaired (D11).
3. **Generations of breed, evaluate, survive** (§4): NSGA-II (evolve.nsga2, D16) over genomes, each decoded
   into a backbone (genome.py, liv.py), trained and scored (`evaluate_genome`, train.py) on the
   objectives, all minimised:

       quality              validation perplexity
       quality_size         perplexity, parameters
       quality_cache        perplexity, inference cache bytes (D7: bf16, batch 1, cache_len tokens)
       quality_size_cache   all three

4. **The selection** (§5): the k lowest-perplexity candidates among those smaller than Transformer++
   in the efficiency objectives (`select_top_k`).

`Config` holds the paper's search settings; its presets (DESIGN.md §7): `cpu` finishes a whole synthesis
in minutes on 2 cores, `gpu` is a one-GPU search, `paper` the paper's 125M setting (24 LIVs, width
768, 4096-token sequences, 0.25M tokens per step, 5000 steps per candidate).

The run machinery (a run folder that survives kills, progress lines, workers, budgets, the command
line) is the `workshop` package beside this file. It plugs into the seams `synthesize` offers: the
evaluation of a generation, a hook after each generation, a start state, the variation, the
baselines' training. This file never imports it:

    python star.py --objective quality_cache      # the workshop's full run (workshop/cli.py)
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before torch loads (D19): idle OpenMP threads sleep instead of spinning
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

import corpus
import evolve
import genome
import liv
import train

OBJECTIVES = {  # name -> the metrics it minimises, in order (the paper's §5: quality, quality-size, quality-cache)
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
    eval_tokens: int      # the held-out set: eval_tokens // seq_len fixed windows (D33)
    population: int
    offspring: int
    generations: int
    lr: float             # peak learning rate (D41): Transformer++'s best at this budget


def derived_rate(d_model: int, depth: int) -> float:
    """D41: a peak rate where none was measured (the gpu preset): the cpu preset's measured 1.29e-2 scaled
    by 1 / (width x depth), the rule that predicted the optimum measured at width 128, depth 12 (3.2e-3
    against 3.15e-3)."""
    return float(f"{1.29e-2 * 64 * 6 / (d_model * depth):.3g}")


PRESETS = {
    # measured on 2 CPU cores: see docs/options.md, the presets; lr: `python -m workshop.bench --only recipe`
    "cpu": Preset(d_model=64, head_dim=16, depth=6, seq_len=128, batch=8, steps=100, eval_tokens=8192,
                  population=8, offspring=8, generations=5, lr=1.29e-2),
    # one GPU: the paper's population and generations at a smaller scale, sized to the default corpus (D31)
    "gpu": Preset(d_model=256, head_dim=64, depth=12, seq_len=1024, batch=8, steps=500, eval_tokens=131_072,
                  population=16, offspring=16, generations=18, lr=derived_rate(256, 12)),  # not measured
    # the paper's 125M setting: 64 x 4096 = 0.25M tokens per step, the paper's rate
    "paper": Preset(d_model=768, head_dim=64, depth=24, seq_len=4096, batch=64, steps=5000, eval_tokens=8_388_608,
                    population=16, offspring=16, generations=18, lr=8e-4),
}
CPU = PRESETS["cpu"]


@dataclass(frozen=True)
class Config:
    """The search's settings: the objective, the model's shape, one candidate's training budget, NSGA-II's
    sizes, the data and the seeds. The workshop's RunConfig extends it (workshop/config.py)."""
    objective: str = "quality_cache"
    preset: str = "cpu"
    d_model: int = CPU.d_model
    head_dim: int = CPU.head_dim
    depth: int = CPU.depth
    seq_len: int = CPU.seq_len
    batch: int = CPU.batch
    steps: int = CPU.steps
    eval_tokens: int = CPU.eval_tokens
    population: int = CPU.population
    offspring: int = CPU.offspring
    generations: int = CPU.generations
    data: Optional[str] = None          # None: the default corpus (corpus.py)
    vocab_size: Optional[int] = None    # of train.bin/val.bin token files
    cache_len: int = 4096               # context T of the cache objective (D7)
    seed: int = 0
    final_top: int = 8                  # k of the paper's selection rule
    algorithm: str = "nsga2"            # or "random", the control (D21)
    baseline_seeds: int = 3             # training seeds of the baselines (D21)
    share_rate: float = genome.SHARE_RATE
    crossover_cut: str = genome.CROSSOVER_CUT
    micro_batch: Optional[int] = None   # gradient accumulation (None: the whole batch; the workshop plans it on CUDA)
    lr: float = CPU.lr                  # peak learning rate of every training (D41)
    baseline_lrs: tuple = (0.5, 1.0, 2.0)  # D41: the baselines train at these multiples of lr

    @classmethod
    def make(cls, preset: str = "cpu", **overrides) -> "Config":
        """A preset's values with some fields replaced."""
        return cls(**{**dataclasses.asdict(PRESETS[preset]), "preset": preset, **overrides})

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.depth % 2:
            raise ValueError(f"depth must be even: the baselines alternate a mixer and a GMemless (got {self.depth})")

    @property
    def metrics(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective]

    def model_config(self, vocab_size: int) -> liv.ModelConfig:
        # max_len: the GConv-2 filter's decay is measured in units of max_len
        return liv.ModelConfig(vocab_size=vocab_size, d_model=self.d_model, depth=self.depth,
                               head_dim=self.head_dim, max_len=max(self.seq_len, self.cache_len))

    def train_config(self, device: str, steps: Optional[int] = None) -> train.TrainConfig:
        return train.TrainConfig(steps=steps or self.steps, lr=self.lr, batch=self.batch, seq_len=self.seq_len,
                                 eval_windows=self.eval_tokens // self.seq_len, seed=self.seed, device=device,
                                 log_every=0, micro_batch=self.micro_batch)

    def training_seeds(self) -> list[int]:
        """D21: the baselines' seeds; the first is the search's own, so a candidate's score and a
        baseline's first seed saw the same batches."""
        return [self.seed + i for i in range(self.baseline_seeds)]

    def rates(self, multiples) -> list[float]:
        """D41: peak rates as multiples of lr (the baselines': `rates(baseline_lrs)`)."""
        return [self.lr * m for m in multiples]

    def search(self) -> evolve.Search:
        return evolve.Search(pop_size=self.population, n_offspring=self.offspring, generations=self.generations,
                             seed=self.seed, algorithm=self.algorithm)

    def variation(self) -> evolve.Variation:
        """How genomes breed (genome.variation, D18)."""
        return genome.variation(self.depth, self.share_rate, None, self.crossover_cut)


# ----------------------------------------------------------------------------------------------------
# One candidate: decode, build, train, score
# ----------------------------------------------------------------------------------------------------


def describe_costs(g, cfg: liv.ModelConfig, cache_len: int) -> dict:
    """Parameters and cache of a genome (or its decoded plans) by formula, without building the model."""
    pc = genome.count_params(g, cfg)
    return dict(params=pc["total"], non_embedding_params=pc["non_embedding"],
                cache_bytes=genome.cache_bytes(g, cfg, seq_len=cache_len))


def evaluate_genome(g: genome.Genome, cfg: liv.ModelConfig, tcfg: train.TrainConfig, data: corpus.Data,
                    cache_len: int, *, seed: Optional[int] = None, trained: Optional[Callable] = None,
                    **train_options) -> dict:
    """Train one candidate under the shared budget and score it (§4): its costs by formula (the cache
    checked against the built model's), its held-out perplexity. A failure (divergence, out of memory,
    an exception) is status 'diverged', 'oom' or 'error' with infinite perplexity, and the search goes on
    (D16). `seed` (default tcfg's) seeds the initial weights and the batch order. `trained(model, result,
    info)` runs on a model that trained; `train_options` go to train.train (the workshop's seams)."""
    tcfg = tcfg if seed is None else dataclasses.replace(tcfg, seed=seed)
    t0 = time.time()
    plans = genome.plans(g)  # decoded once: counted, sized and built from the same plans
    info = dict(describe_costs(plans, cfg, cache_len), perplexity=math.inf, val_loss=math.inf,
                bits_per_byte=None, status="error", error="", seconds=0.0)
    try:
        model = genome.build_model(plans, cfg, seed=tcfg.seed)
        measured = liv.measure_cache_bytes(model, cache_len)  # DESIGN.md §5: analytic == measured
        info["cache_bytes_measured"] = measured
        if measured != info["cache_bytes"]:
            raise RuntimeError(f"cache mismatch: analytic {info['cache_bytes']} != measured {measured}")
        res = train.train(model, data, tcfg, log=None, **train_options)
        info.update(perplexity=res.val_ppl, val_loss=res.val_loss, bits_per_byte=res.bits_per_byte,
                    train_loss=res.train_loss, tokens_per_s=res.tokens_per_s, status=res.status, error=res.error)
        if trained is not None and res.status == "ok":
            trained(model, res, info)
    except torch.cuda.OutOfMemoryError as e:
        info.update(status="oom", error=str(e).splitlines()[0])
    except Exception as e:  # a candidate that raises must not stop the search (D16)
        info.update(status="error", error=f"{type(e).__name__}: {e}")
    info["seconds"] = round(time.time() - t0, 3)
    return info


def objectives_of(info: dict, metrics) -> tuple[float, ...]:
    """The minimised objective vector of an evaluation: inf everywhere when it failed (D16)."""
    ok = info["status"] == "ok" and math.isfinite(info["perplexity"])
    return tuple(float(info.get(m, math.inf)) if ok else math.inf for m in metrics)


class Recorder:
    """The in-memory archive, an evolve.Scorer: evaluates a generation's children one by one with
    `score(genome) -> info` and keeps one record per child (as the workshop's archive.jsonl does)."""

    def __init__(self, score: Callable[[genome.Genome], dict], metrics):
        self.score, self.metrics, self.records = score, metrics, []

    def __call__(self, children: list[evolve.Child], generation: int) -> np.ndarray:
        F = []
        for c in children:
            info = self.score(c.individual)
            F.append(evolve.clean_objectives(objectives_of(info, self.metrics)))
            self.records.append(evolve.record(generation, c, F[-1], info))
        return np.array(F, dtype=float).reshape(len(children), len(self.metrics))


# ----------------------------------------------------------------------------------------------------
# The synthesis and the selection
# ----------------------------------------------------------------------------------------------------


@dataclass
class Synthesis:
    """What a synthesis found: archive records (dicts)."""
    front: list[dict]       # the Pareto front of every candidate evaluated
    top: list[dict]         # the paper's selection: the top-k smaller than Transformer++, by perplexity
    baselines: list[dict]   # one record per (baseline, training seed)
    records: list[dict]     # every candidate evaluated
    config: Config
    state: Optional[evolve.State] = None
    final: list[dict] = field(default_factory=list)  # the workshop's longer retraining (final_steps)
    ref_point: Optional[tuple] = None                 # the workshop's hypervolume reference point
    run_dir: Optional[os.PathLike] = None


def synthesize(config: Optional[Config] = None, *, data: Optional[corpus.Data] = None, device: str = "auto",
               baseline: Optional[Callable] = None, initial: list = (), evaluate=None,
               variation: Optional[evolve.Variation] = None, start: Optional[evolve.State] = None,
               on_generation: Optional[Callable] = None, eligible: Optional[Callable] = None,
               log: Callable[[str], None] = print) -> Synthesis:
    """The paper's Figure 1: the baselines, then NSGA-II over genomes, then the selection.

    The seams, all optional: `baseline(name, genome, seed, lr) -> record` trains a baseline; `initial` are
    genomes that open generation 0 before the random samples; `evaluate` is the evolve.Scorer of a
    generation's children, with `.records`, its archive; `variation` how genomes breed; `start` the
    evolve.State to continue from; `on_generation(step, state)` runs after each generation (raise
    evolve.StopSearch there to end the search); `eligible(records)` narrows what the selection may pick."""
    config = config or Config()
    data = data if data is not None else corpus.load_data(config.data, config.vocab_size)
    device = str(train.resolve_device(device))
    cfg, tcfg = config.model_config(data.vocab_size), config.train_config(device)

    def score(g, seed=None, lr=None):
        return evaluate_genome(g, cfg, tcfg if lr is None else dataclasses.replace(tcfg, lr=lr), data,
                               config.cache_len, seed=seed)

    def train_baseline(name, g, seed, lr):
        record = dict(name=name, seed=seed, lr=lr, genome=str(g), key=genome.canonical_str(g), **score(g, seed, lr))
        log(f"baseline {name:<14} seed {seed} lr {lr:.3g} ppl {record['perplexity']:.3f} {record['status']}")
        return record
    # 1. the baselines, under the same budget (D15), several training seeds (D21) and peak rates (D41)
    baselines = [(baseline or train_baseline)(name, make(config.depth), seed, lr)
                 for name, make in genome.BASELINES.items() for lr in config.rates(config.baseline_lrs)
                 for seed in config.training_seeds()]
    # 2.-3. the initial population, then generations of breed -> evaluate -> survive (NSGA-II, D16)
    evaluate = evaluate if evaluate is not None else Recorder(score, config.metrics)
    state = evolve.nsga2(initial, variation or config.variation(), evaluate, config.search(), start=start,
                         on_generation=on_generation or _progress(log))
    # 4. the paper's selection rule: smaller than Transformer++ (its costs are the same under every seed)
    tpp = next(b for b in baselines if b["name"] == "transformer++")
    top = select_top_k((eligible or list)(evaluate.records), tpp, config.metrics, config.final_top)
    return Synthesis(pareto_front(evaluate.records, config.metrics), top, baselines, evaluate.records, config, state)


def _progress(log):
    def after(step: evolve.Generation, state: evolve.State) -> None:
        best = min((r[0] for r in step.population.F), default=math.inf)
        log(f"generation {state.generation}: {len(step.children)} candidates, best perplexity {best:.3f}")
    return after


def select_top_k(records: list[dict], baseline: Optional[dict], metrics, k: int) -> list[dict]:
    """The paper's rule (§5): the k lowest-perplexity candidates among those smaller than Transformer++
    in every efficiency metric searched (parameters, cache, ...; none for quality)."""
    smaller = [m for m in metrics if m != "perplexity"]
    ok = [r for r in records if r.get("status") == "ok" and r.get("perplexity") is not None
          and math.isfinite(r["perplexity"])]
    if baseline is not None:
        ok = [r for r in ok if all(baseline.get(m) is None or r.get(m, math.inf) < baseline[m] for m in smaller)]
    best, seen = [], set()
    for r in sorted(ok, key=lambda r: r["perplexity"]):
        if r["key"] not in seen:
            seen.add(r["key"])
            best.append(r)
    return best[:k]


def at_best_rate(records: list[dict], field: str = "name") -> dict[str, list[dict]]:
    """D41: the records of each `field` value (a baseline's name, a genome's key) at its best peak rate:
    the rate (`lr`) whose records, one per training seed, have the lowest mean perplexity (a failed
    training counts as inf)."""
    by: dict = {}
    for r in records:
        by.setdefault(r[field], {}).setdefault(r.get("lr"), []).append(r)
    def mean(rs):
        return float(np.mean([r["perplexity"] if r.get("status") == "ok" else math.inf for r in rs]))
    return {k: min(rates.values(), key=mean) for k, rates in by.items()}


def pareto_front(records: list[dict], metrics) -> list[dict]:
    """The non-dominated records of those that trained, by perplexity."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return []
    F = np.array([[r.get(m, math.inf) for m in metrics] for r in ok], dtype=float)
    return sorted((ok[i] for i in evolve.non_dominated_sort(F)[0]), key=lambda r: r["perplexity"])


if __name__ == "__main__":  # the full run with its run folder: the workshop's command line
    from workshop import cli
    sys.exit(cli.main())
