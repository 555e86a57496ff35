"""A run's configuration: one frozen type, its presets, and the rule for config.json on --resume.

`RunConfig` holds everything that decides a synthesis (DESIGN.md §7): the objective, the widths and
depth, the budget per candidate, the search's sizes, the data, the seeds, and what happens after the
search. It validates itself when made; the model and training configurations are derived from it in
one place (`model_config`, `train_config`). `star.synthesize(config)` runs it; the command line builds
it from the options with `RunConfig.make(preset, **overrides)`.

config.json (DESIGN.md D22) carries `format` (today `FORMAT`). On --resume:

- options not given take the run's values (`--resume --name X` alone continues run X as it was);
- *identity* keys (everything that changes results: data, widths, budget per candidate, objective,
  seeds, search sizes and variation), when given, must equal the run's; a change is refused with one
  line naming the key;
- *extent* keys (`EXTENT`: how far the run goes: generations, the final retraining, the per-candidate
  timeout, patience, the weights kept) take the new value when given, but never shrink below what the
  run has done (runlog._check_extents);
- keys missing from an older format are filled with what that format meant (`FORMAT_DEFAULTS`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from dataclasses import dataclass, fields
from typing import Optional

import evolve
import genome
import liv
import star
from star import PRESETS  # the presets are the reference's
from workshop import fidelity, meter, plugins, space, words

VERSION = "0.23"  # the project's version where git cannot say (summary.md); its minor number is DESIGN.md's D23
FORMAT = 5  # 1: the dict of 25 keys written before D22 (no "format" key); 2: RunConfig's fields + "format";
#            3: and the data's fingerprint (D23); 4: and the rungs of a multi-fidelity search (D38); 5: and the
#            peak rates (D41). Formats 1 and 2 counted eval_batches of `batch` windows: read as eval_tokens =
#            eval_batches x batch x seq_len, what they meant (D33)

OBJECTIVES = {  # name -> the metrics it minimises, in order: the paper's four (star.py) and two measured ones
    **star.OBJECTIVES,
    "quality_latency": ("perplexity", "decode_ms"),      # measured (D34): decode p50 at the longest context
    "quality_memory": ("perplexity", "memory_bytes"),    # measured (D34): peak memory at the longest context
}
# what every evaluation records, by formula or by training; a comma list of --objective may name these, the
# measured metrics (meter.metric_names) and the metrics registered by a --plugin (plugins.METRICS)
RECORDED = ("perplexity", "val_loss", "bits_per_byte", "params", "non_embedding_params", "cache_bytes")
# budgets (D35): option -> the metric it caps; params and cache by formula (enforced when genomes are made),
# latency (ms) and memory (bytes) measured (constrained domination)
BUDGETS = {"max_params": "params", "max_cache": "cache_bytes", "max_latency": "decode_ms", "max_memory": "memory_bytes"}
FORMULA_BUDGETS = ("max_params", "max_cache")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, nothing written or lost."""


class RunFailed(Exception):
    """The run cannot go on (every candidate of generation 0 failed, the disk is full): printed as one
    line, exit status 1; everything written so far is kept."""


def in_python(e: Exception) -> Exception:
    """A UsageError or RunFailed, whose message names command-line options, in the words of a Python call
    (`star.synthesize`): `--generations 3` is `generations=3`, `--resume` is `resume=True`, `--name` and
    `--out` are `run_dir`; a command quoted in backticks stays as it is. The command line's words stay
    in `cli`, for star.py's own one line."""
    def words(m: re.Match) -> str:
        flag, value = m.group(1), m.group(2)
        if flag in ("name", "out"):
            return "run_dir"
        if flag == "resume":
            return "resume=True"
        field = flag.replace("-", "_")
        return f"{field}={value}" if value is not None else field
    cli = getattr(e, "cli", str(e))
    parts = cli.split("`")
    out = type(e)("`".join(p if i % 2 else re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)(?: ([0-9][^\s;,:)]*))?", words, p)
                           for i, p in enumerate(parts)))
    out.cli = cli
    return out


EXTENT = ("generations", "final_steps", "final_lrs", "final_top", "timeout", "patience", "weights")  # may change on --resume

# what a key missing from an older config.json meant: the defaults of the code that wrote it. Format 2
# files written before D24-D25 and D34-D37 have no class set, no initial genomes, kept no weights, measured nothing
_BEFORE_D24 = dict(allow_classes=None, init=None, weights=False)
DEPLOY_DEFAULTS = dict(measure=False, meter="clock", deploy_d_model=256, deploy_head_dim=64, deploy_contexts=(1024, 4096),
                       deploy_dtype="float32", max_params=None, max_cache=None, max_latency=None, max_memory=None,
                       plugins=())
SINGLE_FIDELITY = dict(rungs=(), eta=4)  # before D38 every run was the paper's single-fidelity search
ONE_RATE = dict(lr=8e-4, baseline_lrs=(1.0,), final_lrs=(1.0,), lr_grid=())  # before D41: the paper's 8e-4 for all
FORMAT_DEFAULTS = {1: dict(algorithm="nsga2", baseline_seeds=1, seed_baselines=False, share_rate=0.1,
                           crossover_cut="liv", timeout=None, micro_batch=None, final_top=8, final_steps=0,
                           vocab_size=None, cache_len=4096, patience=None, data_fingerprint=None, **_BEFORE_D24,
                           **DEPLOY_DEFAULTS, **SINGLE_FIDELITY, **ONE_RATE),
                   # format 2: fields added after it was first written, each the behaviour from before it
                   2: dict(patience=None, data_fingerprint=None, **_BEFORE_D24, **DEPLOY_DEFAULTS, **SINGLE_FIDELITY,
                           **ONE_RATE),
                   3: dict(SINGLE_FIDELITY, **ONE_RATE), 4: dict(ONE_RATE)}
# identity keys an older config.json did not record (None there): not checked on that --resume, and
# recorded from then on (config.json is rewritten in today's format)
RECORDED_LATE = ("data_fingerprint",)


@dataclass(frozen=True)
class RunConfig(star.Config):
    """Everything that decides a synthesis: the reference's settings (star.Config) and the workshop's;
    validated when made (UsageError, one line)."""

    seed_baselines: bool = False        # the baselines open generation 0
    final_steps: int = 0                # retrain the top-k and the baselines this long (0: not)
    timeout: Optional[float] = None     # seconds per candidate (runs candidates in workers)
    patience: Optional[int] = None      # stop once the hypervolume has not grown for this many generations
    allow_classes: Optional[tuple] = None  # D25: the LIV classes sampled and mutated (None: all 17)
    init: Optional[tuple] = None        # D25: genomes that open generation 0 (the strings themselves)
    weights: bool = True                # D24: retrain the selected top-k and keep their weights in the folder
    # measured costs at a deployment shape (D34): recorded with `measure`, or when an objective or a budget needs them
    measure: bool = False
    meter: str = "clock"                # clock | standin (deterministic, for tests)
    deploy_d_model: int = 256
    deploy_head_dim: int = 64
    deploy_contexts: tuple = (1024, 4096)
    deploy_dtype: str = "float32"
    max_params: Optional[int] = None    # budgets (D35), see BUDGETS
    max_cache: Optional[int] = None
    max_latency: Optional[float] = None
    max_memory: Optional[float] = None
    plugins: tuple = ()                 # modules imported everywhere a run is read or evaluated (D37)
    rungs: tuple = ()                   # D38: training budgets of successive halving, the last = steps (): single fidelity
    eta: int = 4                        # D38: of n candidates at a rung, ceil(n / eta) go up
    data_fingerprint: Optional[str] = None  # corpus.Data.fingerprint of `data` (None: filled in when loaded; D23)
    final_lrs: tuple = (0.25, 0.5, 1.0, 2.0)  # D41: --final-steps retrains each genome at these multiples of lr
    lr_grid: tuple = ()                 # D41: each candidate trains at these multiples of lr, scored at its best

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
        for key in ("allow_classes", "init", "deploy_contexts", "plugins", "rungs", "baseline_lrs", "final_lrs",
                    "lr_grid"):  # JSON gives lists: tuples, so
            if isinstance(getattr(self, key), list):                    # the frozen config hashes and compares
                object.__setattr__(self, key, tuple(getattr(self, key)))
        try:
            plugins.load(self.plugins)  # before the objective is checked: a plugin may register its metrics
        except ImportError as e:
            raise UsageError(f"--plugin: cannot import {e.name or e}: {e}") from None
        _validate(self)

    # --- derived configurations, in one place ---

    @property
    def metrics(self) -> tuple[str, ...]:
        """The minimised objective vector's metrics, in order."""
        return metrics_of(self.objective)

    @property
    def measures(self) -> bool:
        """Whether every candidate is measured at the deployment shape (D34)."""
        measured = set(meter.metric_names(self.deploy_contexts))
        return self.measure or bool(measured & set(self.metrics)) or self.max_latency is not None \
            or self.max_memory is not None

    def deploy_shape(self, vocab_size: int, device: str = "cpu") -> meter.Shape:
        return meter.Shape(d_model=self.deploy_d_model, head_dim=self.deploy_head_dim, contexts=self.deploy_contexts,
                           dtype=self.deploy_dtype, device=device, vocab_size=vocab_size)

    def budgets(self) -> dict[str, float]:
        """{metric: its cap} for the budgets set (D35)."""
        return {m: getattr(self, opt) for opt, m in BUDGETS.items() if getattr(self, opt) is not None}

    def violation(self, record: dict, options=tuple(BUDGETS)) -> float:
        """How far a record is over the budgets `options` (default: all): the sum of value/cap - 1 over those
        exceeded, 0 within them, inf for a value not known."""
        total = 0.0
        for opt in options:
            cap, v = getattr(self, opt), record.get(BUDGETS[opt])
            if cap is not None:
                total += math.inf if v is None or not math.isfinite(v) else max(0.0, v / cap - 1.0)
        return total

    def within_budgets(self, record: dict) -> bool:
        return self.violation(record) == 0.0

    @property
    def tokens_per_candidate(self) -> int:
        return self.steps * self.batch * self.seq_len

    @property
    def eval_windows(self) -> int:
        """The held-out set's fixed windows of seq_len tokens (D33): as many as eval_tokens holds."""
        return self.eval_tokens // self.seq_len

    def data_fit(self, data) -> list[str]:
        """The run header's words on how the budget fits the data (D31): passes over the training split
        per candidate, and warnings when a candidate sees its training data more than once or the
        held-out windows overlap."""
        passes = self.tokens_per_candidate / len(data.train)
        lines = [f"data: {len(data.train):,} training / {len(data.val):,} held-out tokens; per candidate "
                 f"{self.tokens_per_candidate:,} training tokens = {passes:.2f} passes, {self.eval_windows:,} "
                 f"held-out windows of {self.seq_len} = {self.eval_windows * self.seq_len:,} tokens"]
        if passes > 1:
            lines.append(f"warning: each candidate trains {passes:.1f} times over the same data, so the search "
                         "rewards memorising it; give more text with --data (token files for the paper preset) or "
                         "lower --steps or --batch")
        return lines

    def fitted(self, data) -> "RunConfig":
        """This configuration with its held-out set never larger than the held-out split (D33): at most
        as many windows of seq_len as the split holds without overlapping."""
        most = max(1, (len(data.val) - 1) // self.seq_len)
        return self if self.eval_windows <= most else dataclasses.replace(self, eval_tokens=most * self.seq_len)

    @property
    def multi_fidelity(self) -> Optional[fidelity.Rungs]:
        """D38: the rungs of a multi-fidelity search (None: the paper's single fidelity)."""
        return fidelity.Rungs(self.rungs, self.eta) if self.rungs else None

    def variation(self) -> evolve.Variation:
        """How this run's genomes breed (genome.variation, D18), in its class set (D25; None: all 17)."""
        return genome.variation(self.depth, self.share_rate, self.allow_classes, self.crossover_cut)

    def initial(self, baselines: list[dict] = ()) -> list:  # star.synthesize's `initial`
        """Generation 0's given genomes: with seed_baselines, the baselines trained under the search's seed
        (their records are reused, D15), then --init's (D25), in their order."""
        reused = [genome.Genome.parse(b["genome"]) for b in baselines if b["seed"] == self.seed] \
            if self.seed_baselines else []
        return reused + [genome.Genome.parse(text) for text in self.init or ()]

    def eligible(self, records: list[dict]) -> list[dict]:  # star.synthesize's `eligible`
        """The records the selection may pick: scored at the highest rung (D38), within the budgets (D35)."""
        return fidelity.eligible(records, self.within_budgets)

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
        if fmt in (1, 2) and isinstance(d.get("eval_batches"), int) and isinstance(d.get("batch"), int) \
                and isinstance(d.get("seq_len"), int):  # format 1 counted eval_batches of `batch` windows
            d["eval_tokens"] = d.pop("eval_batches") * d["batch"] * d["seq_len"]
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
        """The configuration a --resume runs with: the run's `stored` one, except the fields this
        invocation `given`: an extent key takes the new value, an identity key must equal the run's."""
        for f in fields(self):
            was, now = getattr(stored, f.name), getattr(self, f.name)
            if f.name not in given or f.name in EXTENT or was == now or (f.name in RECORDED_LATE and was is None):
                continue
            if f.name == "data_fingerprint":
                raise UsageError(f"--resume: the data changed since {where} began: it was {was}, it is now {now}; "
                                 "restore the run's data, or start a new run with another --name")
            raise UsageError(f"--resume: {where} was made with {f.name} = {_short(was)}, this asks for {_short(now)}; "
                             "it decides results and cannot change: use the run's option or another --name")
        return dataclasses.replace(stored, **{k: getattr(self, k) for k in EXTENT if k in given},
                                   **{k: getattr(self, k) for k in RECORDED_LATE if getattr(stored, k) is None})


def metrics_of(objective: str) -> tuple[str, ...]:
    """The metrics an objective minimises: a named one (OBJECTIVES) or a comma list of metric names."""
    return OBJECTIVES[objective] if objective in OBJECTIVES else tuple(m.strip() for m in objective.split(","))


def _short(value, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _validate_space(c: RunConfig) -> None:
    """D25: the class set and the initial genomes (each legal, of the run's depth, inside the set)."""
    try:
        classes = genome.check_classes(c.allow_classes)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--allow-classes: {e}") from None
    if classes is not None and c.allow_classes != classes:
        object.__setattr__(c, "allow_classes", classes)
    if classes is not None and c.seed_baselines and not all(space.uses_only(make(c.depth), classes)
                                                           for make in genome.BASELINES.values()):
        raise UsageError(f"--seed-baselines puts Transformer++ and StripedMamba (classes 1, 5, 9) into generation 0, "
                         f"but --allow-classes allows only {', '.join(map(str, classes))}")
    if c.init is None:
        return
    if not c.init or len(c.init) > c.population:
        raise UsageError(f"--init: {len(c.init)} genomes; give 1 to --population {c.population}")
    for i, text in enumerate(c.init):
        try:
            g = genome.Genome.parse(text) if isinstance(text, str) else None
        except ValueError as e:
            raise UsageError(f"--init genome {i + 1}: {e}") from None
        if g is None or g.depth != c.depth:
            raise UsageError(f"--init genome {i + 1}: {'not a genome string' if g is None else f'{g.depth} LIVs'}, "
                             f"the run's --depth is {c.depth}")
        if not space.uses_only(g, classes):
            raise UsageError(f"--init genome {i + 1} ({text}) uses a class outside --allow-classes")


def _validate(c: RunConfig) -> None:
    _validate_objective(c)
    if c.preset not in PRESETS:
        raise UsageError(f"unknown --preset {c.preset!r}; choose one of {', '.join(PRESETS)}")
    for key in (k for k in dataclasses.asdict(PRESETS["cpu"]) if k != "lr"):  # the rate: _validate_rates
        v = getattr(c, key)
        if type(v) is not int or v < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be an integer >= 1 (got {v!r})")
    if c.depth % 2:
        raise UsageError(f"--depth must be even: the baselines alternate a mixer and a GMemless (got {c.depth})")
    if type(c.eval_tokens) is not int or c.eval_tokens < c.seq_len:
        raise UsageError(f"--eval-tokens must be at least --seq-len {c.seq_len} (got {c.eval_tokens})")
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
    if type(c.seed) is not int or not 0 <= c.seed < words.SEED_LIMIT:
        raise UsageError(f"--seed must be in 0 .. 2**63 - 1 (got {c.seed})")
    if c.timeout is not None and not (0 < c.timeout < 1e9 and math.isfinite(c.timeout)):
        raise UsageError(f"--timeout must be a number of seconds > 0 and < 1e9 (got {c.timeout})")
    if c.patience is not None and (type(c.patience) is not int or c.patience < 1):
        raise UsageError(f"--patience must be a number of generations >= 1 (got {c.patience})")
    if c.data_fingerprint is not None and not isinstance(c.data_fingerprint, str):
        raise UsageError(f"data_fingerprint must be a string (got {c.data_fingerprint!r})")
    if c.micro_batch is not None and not (1 <= c.micro_batch <= c.batch and c.batch % c.micro_batch == 0):
        raise UsageError(f"--micro-batch must divide --batch {c.batch} (got {c.micro_batch})")
    if not isinstance(c.weights, bool):
        raise UsageError(f"weights must be true or false (got {c.weights!r})")
    _validate_rates(c)
    _validate_rungs(c)
    _validate_space(c)


def _validate_rates(c: RunConfig) -> None:
    """D41: the peak rate, and its grids of multiples."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not (number(c.lr) and 0 < c.lr < 1):
        raise UsageError(f"--lr must be a peak learning rate > 0 and < 1 (got {c.lr!r})")
    for key, least in (("baseline_lrs", 1), ("final_lrs", 1), ("lr_grid", 0)):
        grid = getattr(c, key)
        if not (isinstance(grid, tuple) and len(grid) >= least and len(set(grid)) == len(grid)
                and all(number(m) and 0 < m * c.lr < 1 for m in grid)):
            raise UsageError(f"--{key.replace('_', '-')} must be distinct multiples of --lr {c.lr:g}, each giving a rate "
                             f"> 0 and < 1{'' if least == 0 else ', at least one'} (got {grid!r})")


def _validate_rungs(c: RunConfig) -> None:
    if type(c.eta) is not int or c.eta < 2:
        raise UsageError(f"--eta must be an integer >= 2 (got {c.eta!r})")
    if not c.rungs:
        return
    try:
        c.multi_fidelity  # fidelity.Rungs checks the ladder itself
    except ValueError as e:
        raise UsageError(f"--rungs: {e}") from None
    if c.rungs[-1] != c.steps:
        raise UsageError(f"--rungs {','.join(map(str, c.rungs))}: the top rung is the budget the baselines train at, "
                         f"--steps {c.steps}; end --rungs with it")


def _validate_objective(c: RunConfig) -> None:
    if not (isinstance(c.deploy_contexts, tuple) and c.deploy_contexts
            and all(type(x) is int and x >= 1 for x in c.deploy_contexts)):
        raise UsageError(f"--deploy-contexts must be integers >= 1 (got {c.deploy_contexts!r})")
    known = RECORDED + meter.metric_names(c.deploy_contexts) + tuple(plugins.METRICS)
    metrics = metrics_of(c.objective)
    bad = [m for m in metrics if m not in known]
    if c.objective not in OBJECTIVES and (bad or len(set(metrics)) != len(metrics)):
        raise UsageError(f"unknown --objective {c.objective!r}: choose one of {', '.join(OBJECTIVES)}, or a comma list "
                         f"of distinct metrics of {', '.join(known[:12])}, ... ({bad[0] if bad else 'a repeated metric'})")
    if c.meter not in meter.METERS:
        raise UsageError(f"unknown --meter {c.meter!r}; choose one of {', '.join(meter.METERS)}")
    if c.deploy_dtype not in meter.DTYPES:
        raise UsageError(f"unknown --deploy-dtype {c.deploy_dtype!r}; choose one of {', '.join(meter.DTYPES)}")
    try:
        liv.ModelConfig(d_model=c.deploy_d_model, head_dim=c.deploy_head_dim)
    except ValueError as e:
        raise UsageError(f"--deploy-width: {e}") from None
    for opt in BUDGETS:
        v = getattr(c, opt)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
            raise UsageError(f"--{opt.replace('_', '-')} must be a number > 0 (got {v!r})")


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
