"""A run's configuration: one frozen type, its presets, and the rule for config.json on --resume.

`RunConfig` holds everything that decides a synthesis (DESIGN.md §7): the objective, the widths and
depth, the budget per candidate, the search's sizes, the data, the seeds, and what happens after the
search. It validates itself when made; the model and training configurations are derived from it in
one place (`model_config`, `train_config`). `star.synthesize(config)` runs it; the command line builds
it from the options with `RunConfig.make(preset, **overrides)`.

config.json (DESIGN.md D22) carries `format` (today `FORMAT`). On --resume:

- *identity* keys (everything that changes results: data, widths, budget per candidate, objective,
  seeds, search sizes and variation) must equal the run's; a change is refused with one line naming
  the key;
- *extent* keys (`EXTENT`: how far the run goes: generations, the final retraining, the per-candidate
  timeout) take the new value when the option is given, else the run's;
- keys missing from an older format are filled with what that format meant (`FORMAT_DEFAULTS`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, fields
from typing import Optional

import evolve
import genome
import liv
import train

VERSION = "0.23"  # the project's version where git cannot say (summary.md); its minor number is DESIGN.md's newest D
FORMAT = 3  # 1: the dict of 25 keys written before D22 (no "format" key); 2: RunConfig's fields + "format";
#            3: and the data's fingerprint (D23)

OBJECTIVES = {  # name -> the metrics it minimises, in order
    "quality": ("perplexity",),
    "quality_size": ("perplexity", "params"),
    "quality_cache": ("perplexity", "cache_bytes"),
    "quality_size_cache": ("perplexity", "params", "cache_bytes"),
}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, nothing written or lost."""


class RunFailed(Exception):
    """The run cannot go on (every candidate of generation 0 failed, the disk is full): printed as one
    line, exit status 1; everything written so far is kept."""


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

EXTENT = ("generations", "final_steps", "final_top", "timeout")  # may change on --resume

# what a key missing from a format-1 config.json meant: the defaults of the code that wrote it
FORMAT_DEFAULTS = {1: dict(algorithm="nsga2", baseline_seeds=1, seed_baselines=False, share_rate=0.1,
                           crossover_cut="liv", timeout=None, micro_batch=None, final_top=8, final_steps=0,
                           vocab_size=None, cache_len=4096, data_fingerprint=None),
                   2: dict(data_fingerprint=None)}
# identity keys an older config.json did not record (None there): not checked on that --resume, and
# recorded from then on (config.json is rewritten in today's format)
RECORDED_LATE = ("data_fingerprint",)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a synthesis; validated when made (UsageError, one line)."""

    objective: str = "quality_cache"
    preset: str = "cpu"
    d_model: int = PRESETS["cpu"].d_model
    head_dim: int = PRESETS["cpu"].head_dim
    depth: int = PRESETS["cpu"].depth
    seq_len: int = PRESETS["cpu"].seq_len
    batch: int = PRESETS["cpu"].batch
    steps: int = PRESETS["cpu"].steps
    eval_batches: int = PRESETS["cpu"].eval_batches
    population: int = PRESETS["cpu"].population
    offspring: int = PRESETS["cpu"].offspring
    generations: int = PRESETS["cpu"].generations
    data: Optional[str] = None          # None: the default corpus (corpus.py)
    vocab_size: Optional[int] = None    # of train.bin/val.bin token files
    cache_len: int = 4096               # context T of the cache objective (D7)
    seed: int = 0
    seed_baselines: bool = False        # the baselines open generation 0
    final_top: int = 8                  # k of the paper's selection rule
    final_steps: int = 0                # retrain the top-k and the baselines this long (0: not)
    algorithm: str = "nsga2"            # or "random", the control (D21)
    baseline_seeds: int = 3             # training seeds of the baselines and the retraining (D21)
    share_rate: float = genome.SHARE_RATE
    crossover_cut: str = genome.CROSSOVER_CUT
    timeout: Optional[float] = None     # seconds per candidate (runs candidates in workers)
    micro_batch: Optional[int] = None   # gradient accumulation (None: chosen on CUDA, whole batch on CPU)
    data_fingerprint: Optional[str] = None  # corpus.Data.fingerprint of `data` (None: filled in when loaded; D23)

    @classmethod
    def make(cls, preset: Optional[str] = None, **overrides) -> "RunConfig":
        """A preset's values (default: gpu with CUDA, else cpu) with the given fields replaced; None
        means "not given"."""
        if preset is None:
            import torch

            preset = "gpu" if torch.cuda.is_available() else "cpu"
        if preset not in PRESETS:
            raise UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"RunConfig has no field {unknown[0]!r}")
        return cls(**{**dataclasses.asdict(PRESETS[preset]), "preset": preset, **given})

    def __post_init__(self):
        _validate(self)

    # --- derived configurations, in one place ---

    @property
    def metrics(self) -> tuple[str, ...]:
        """The minimised objective vector's metrics, in order."""
        return OBJECTIVES[self.objective]

    def model_config(self, vocab_size: int) -> liv.ModelConfig:
        try:
            # max_len as train.py's: the GConv-2 filter's decay is measured in units of max_len
            return liv.ModelConfig(vocab_size=vocab_size, d_model=self.d_model, depth=self.depth,
                                   head_dim=self.head_dim, max_len=max(self.seq_len, self.cache_len))
        except ValueError as e:
            raise UsageError(str(e)) from None

    def train_config(self, device: str, steps: Optional[int] = None) -> train.TrainConfig:
        return train.TrainConfig(steps=steps or self.steps, batch=self.batch, seq_len=self.seq_len,
                                 eval_batches=self.eval_batches, seed=self.seed, device=device, log_every=0,
                                 micro_batch=self.micro_batch)

    def training_seeds(self) -> list[int]:
        """D21: the seeds the baselines (and a --final-steps retraining) are trained under; the first is
        the search's own, so a candidate's single score and a baseline's first seed saw the same batches."""
        return [self.seed + i for i in range(self.baseline_seeds)]

    def search(self) -> evolve.Search:
        return evolve.Search(pop_size=self.population, n_offspring=self.offspring, generations=self.generations,
                             seed=self.seed, algorithm=self.algorithm)

    def variation(self) -> evolve.Variation:
        return evolve.Variation(
            sample=lambda rng: genome.random_genome(self.depth, rng, share_rate=self.share_rate),
            crossover=lambda a, b, rng: genome.crossover(a, b, rng, cut=self.crossover_cut),
            mutate=genome.mutate, repair=genome.repair, encode=str, decode=genome.Genome.parse,
            key=genome.canonical_str)

    # --- config.json ---

    def to_json(self) -> str:
        return json.dumps(dict(dataclasses.asdict(self), format=FORMAT), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "config.json") -> "RunConfig":
        """Read a config.json of any format; UsageError (one line) for one that is not a run's."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{where} is not valid JSON; restore it or choose another --name") from None
        if not isinstance(d, dict):
            raise UsageError(f"{where} holds {type(d).__name__}, not a run's configuration; restore it or "
                             "choose another --name")
        fmt = d.pop("format", 1)
        if fmt not in (*FORMAT_DEFAULTS, FORMAT) or type(fmt) is not int:
            raise UsageError(f"{where} has format {fmt!r}; this version reads formats 1 to {FORMAT}")
        d = {**FORMAT_DEFAULTS.get(fmt, {}), **d}
        names = {f.name for f in fields(cls)}
        if set(d) - names or names - set(d):
            odd = sorted((set(d) - names) | (names - set(d)))[0]
            raise UsageError(f"{where}: key {odd!r} {'unknown' if odd in d else 'missing'} for format {fmt}; "
                             "restore it or choose another --name")
        try:
            return cls(**d)
        except (UsageError, TypeError) as e:
            raise UsageError(f"{where}: {e}") from None

    def resumed(self, stored: "RunConfig", given: set[str], where: str) -> "RunConfig":
        """The configuration a --resume runs with: `self` (what this invocation asks for) must equal the
        run's `stored` one on every identity key; an extent key takes this invocation's value if it was
        `given`, else the run's."""
        for f in fields(self):
            was, now = getattr(stored, f.name), getattr(self, f.name)
            if f.name in EXTENT or was == now or (f.name in RECORDED_LATE and was is None):
                continue
            if f.name == "data_fingerprint":
                raise UsageError(f"--resume: the data changed since {where} began: it was {was}, it is now {now}; "
                                 "restore the run's data, or start a new run with another --name")
            raise UsageError(f"--resume: {where} was made with {f.name} = {was!r}, this asks for {now!r}; it "
                             "decides results and cannot change: use the run's option or another --name")
        return dataclasses.replace(stored, **{k: getattr(self, k) for k in EXTENT if k in given},
                                   **{k: getattr(self, k) for k in RECORDED_LATE if getattr(stored, k) is None})


def _validate(c: RunConfig) -> None:
    if c.objective not in OBJECTIVES:
        raise UsageError(f"unknown --objective {c.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if c.preset not in PRESETS:
        raise UsageError(f"unknown --preset {c.preset!r}; choose one of {', '.join(PRESETS)}")
    for key in dataclasses.asdict(PRESETS["cpu"]):
        v = getattr(c, key)
        if type(v) is not int or v < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be an integer >= 1 (got {v!r})")
    if c.depth % 2:
        raise UsageError(f"--depth must be even: the baselines alternate a mixer and a GMemless (got {c.depth})")
    if type(c.cache_len) is not int or c.cache_len < 1:
        raise UsageError(f"--cache-len must be >= 1 (got {c.cache_len})")
    if c.final_top < 1 or c.final_steps < 0:
        raise UsageError("--final-top must be >= 1 and --final-steps >= 0")
    if c.algorithm not in evolve.ALGORITHMS:
        raise UsageError(f"unknown --algorithm {c.algorithm!r}; choose one of {', '.join(evolve.ALGORITHMS)}")
    if c.baseline_seeds < 1:
        raise UsageError(f"--baseline-seeds must be >= 1 (got {c.baseline_seeds})")
    if not 0.0 <= c.share_rate <= 1.0:
        raise UsageError(f"--share-rate must be between 0 and 1 (got {c.share_rate})")
    if c.crossover_cut not in ("liv", "anywhere"):
        raise UsageError(f"unknown --crossover-cut {c.crossover_cut!r}; choose liv or anywhere")
    if type(c.seed) is not int or not 0 <= c.seed < liv.SEED_LIMIT:
        raise UsageError(f"--seed must be in 0 .. 2**63 - 1 (got {c.seed})")
    if c.timeout is not None and not (0 < c.timeout < 1e9 and math.isfinite(c.timeout)):
        raise UsageError(f"--timeout must be a number of seconds > 0 and < 1e9 (got {c.timeout})")
    if c.data_fingerprint is not None and not isinstance(c.data_fingerprint, str):
        raise UsageError(f"data_fingerprint must be a string (got {c.data_fingerprint!r})")
    if c.micro_batch is not None and not (1 <= c.micro_batch <= c.batch and c.batch % c.micro_batch == 0):
        raise UsageError(f"--micro-batch must divide --batch {c.batch} (got {c.micro_batch})")


def check_execution(workers: int, ray: Optional[str]) -> None:
    """Options that spread candidates but never change results (not recorded in config.json)."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {workers})")
    if ray is not None and workers > 1:
        raise UsageError("--ray and --workers exclude each other: Ray schedules the candidates itself")
    if ray is not None and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray, an optional dependency: pip install ray")


def run_name(c: RunConfig) -> str:
    return f"{c.objective}-{c.preset}-seed{c.seed}"
