"""The training loop and evaluation: how STAR scores one candidate backbone (DESIGN.md §7, D17).

Every genome the search proposes is decoded into a model and trained here under *exactly the same
budget* (steps, batch, sequence length, learning-rate schedule, data order), then scored by its
validation perplexity on a fixed held-out set. Same budget + same batches + same held-out windows is
what makes perplexities of different architectures comparable. The batches come from corpus.py's
`Data`.

The file has three parts:

1. **Training.** `TrainConfig` holds the budget. AdamW (β 0.9/0.95) with weight decay 0.1 on
   matrices only — never on parameters tagged `_no_weight_decay` (decays, filters; DESIGN.md N7) and never
   on vectors (norms, biases); linear warm-up then cosine decay to 10% of the peak lr 8e-4; gradient
   clipping at 1.0; bf16 autocast on CUDA; optional `torch.compile`. A run whose loss or gradient norm
   stops being finite stops at once and is reported `diverged`; a CUDA out-of-memory is `oom`.
2. **Checkpoints.** Weights + model config + genome string + training config (the schedule) + step +
   optimizer + data position (the batch generator's state), like nanoGPT; loading rebuilds the model
   from the genome. An interrupted training continues to its planned length exactly as if it had not
   stopped; a finished one can be extended under a new schedule, recorded as such (D27).
3. **The command line.**

    python train.py --genome transformer++ --steps 200             # train one genome, print metrics
    python train.py --genome 1.1.1.1.1-9.2.1.2.1 --data synthetic --steps 50
    python train.py --genome transformer++ --steps 2000 --save ckpt.pt --save-every 500
    python train.py --resume ckpt.pt                               # after a kill: on to step 2000
    python train.py --resume ckpt.pt --extend 1000 --save more.pt  # 1000 more, a new schedule
    python train.py --sample ckpt.pt --prompt "ROMEO:"             # print a continuation

Glossary (shape comments): b batch, l sequence length (seq_len), v vocabulary size.

What this file does not do: multi-GPU training, dropout, tokenisation (text is bytes; token files
come pre-tokenised).
"""
from __future__ import annotations

import collections
import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from corpus import Data

@dataclass
class TrainConfig:
    """The training budget of one candidate. Identical for every candidate of a search."""

    steps: int = 200
    batch: int = 16
    seq_len: int = 256
    lr: float = 8e-4  # D17: peak learning rate
    warmup: int | None = None  # linear warm-up steps; None = 10% of steps (at least 1)
    min_lr_ratio: float = 0.1  # D17: cosine decays to 10% of the peak
    weight_decay: float = 0.1  # D17: matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # D17
    grad_clip: float = 1.0  # D17: max global gradient norm (0 = no clipping)
    eval_batches: int = 8  # held-out set = eval_batches * batch fixed windows of seq_len ...
    eval_windows: int | None = None  # ... or this many windows, in batches of `batch` (a run's eval tokens, D33)
    seed: int = 0  # seeds torch and the batch order
    device: str = "auto"  # "auto" = cuda when available, else cpu
    bf16: bool = True  # D17: bf16 autocast, on CUDA only (ignored on CPU)
    compile: bool = False  # D17: torch.compile; off by default (each candidate is a new graph to compile, DESIGN.md N8)
    log_every: int = 50  # progress line every this many steps (0 = none)
    micro_batch: int | None = None  # sequences per micro-batch; None = chosen by micro_batch_for (whole batch on CPU)

    def __post_init__(self):
        for name in ("steps", "batch", "seq_len", "eval_batches"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"TrainConfig.{name}: must be a positive integer (got {getattr(self, name)!r})")
        if self.eval_windows is not None and not (isinstance(self.eval_windows, int) and self.eval_windows >= 1):
            raise ValueError(f"TrainConfig.eval_windows: must be None or a positive integer (got {self.eval_windows!r})")
        if self.micro_batch is not None and not (isinstance(self.micro_batch, int) and 1 <= self.micro_batch
                                                 and self.batch % self.micro_batch == 0):
            raise ValueError(f"TrainConfig.micro_batch: must divide batch {self.batch} (got {self.micro_batch!r})")
        if self.warmup is not None and not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"TrainConfig.warmup: must be None or an integer >= 0 (got {self.warmup!r})")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr: must be > 0 (got {self.lr!r})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio: must be in [0, 1] (got {self.min_lr_ratio!r})")
        self.betas = tuple(self.betas)  # a list from JSON becomes the tuple AdamW expects

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 10) if self.warmup is None else self.warmup

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """D17: linear warm-up to the peak, then cosine decay to min_lr_ratio · peak at the last step.

    Step 0 gets peak / warmup, step warmup - 1 the peak, and the last step (steps - 1) exactly
    min_lr_ratio · peak (when there is a decay phase at all: steps > warmup + 1).
    """
    peak, floor, w = tcfg.lr, tcfg.lr * tcfg.min_lr_ratio, tcfg.warmup_steps
    if step < w:
        return peak * (step + 1) / w
    progress = min(1.0, (step - w) / max(1, tcfg.steps - 1 - w))  # 0 → 1 over the decay phase
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def _is_no_weight_decay(p: torch.Tensor) -> bool:
    # Same test as liv.is_no_weight_decay, inlined so this file works with any nn.Module.
    return getattr(p, "_no_weight_decay", False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups (D17, DESIGN.md N7): decay iff the parameter is a matrix (ndim >= 2) *and*
    not tagged `_no_weight_decay`. "ndim >= 2" alone would decay 2-D decay rates and filters.

    Shared parameters appear once (named_parameters deduplicates them). Each group carries the names
    of its parameters under "param_names" (torch's own key) so that tests and logs can read them.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not _is_no_weight_decay(p) else no_decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def resolve_device(device: str) -> torch.device:
    """'auto' = cuda when available, else cpu; cpu, cuda or cuda:N; anything else, or a CUDA device
    that is not there, is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: choose auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _autocast(device: torch.device, bf16: bool):
    """D17: bf16 autocast on CUDA only; float32 everywhere else."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # logits (b, l, v), y (b, l) → mean next-token cross-entropy, computed in float32
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, tcfg: TrainConfig) -> tuple[float, float]:
    """Mean cross-entropy (nats per token) and perplexity on the fixed held-out windows."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.val_batches(tcfg.eval_batches, tcfg.batch, tcfg.seq_len, device, n_windows=tcfg.eval_windows):
        with _autocast(device, tcfg.bf16):
            logits = model(x)  # (b, l, v)
        total += _loss(logits, y).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    loss = total / count
    return loss, _ppl(loss)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709


@dataclass
class TrainResult:
    """What one training run reports. Losses are in nats per token; infinite when not 'ok'."""

    status: str  # 'ok' | 'diverged' | 'oom'
    steps: int  # optimizer steps done
    train_loss: float  # mean of the last (up to log_every) training losses
    val_loss: float
    val_ppl: float
    bits_per_byte: float | None  # val_loss / ln 2, for byte-level data only
    tokens_per_s: float  # training throughput (evaluation excluded)
    seconds: float  # wall time, evaluation included
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def release_memory() -> None:
    """Return freed CUDA memory to the device. Call it *after* an `except` block: inside it, the
    exception's traceback still references the frames that hold the tensors."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_determinism(device: torch.device) -> None:
    """Deterministic kernels where they cost little (docs/workers-and-ray.md, "Reproducible on CUDA"): cuDNN
    without autotuning, and torch's deterministic algorithms, warning (once) where an operator has no
    deterministic implementation instead of failing. STAR_DETERMINISM=strict asks for strict mode, in
    which torch refuses such an operator and SDPA's backward takes its deterministic kernel; the
    recurrences' cumulative sums then run as matrix products (liv.cumsum). cuBLAS's fixed workspace is set
    here, before the first cuBLAS call of the process creates its handle (the candidates' processes train
    first)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=os.environ.get("STAR_DETERMINISM") != "strict")


def _gradients(fwd, params, x, y, micro: int, tcfg: TrainConfig, device) -> tuple[float, float]:
    """One step's gradients: the batch (b, l) in micro-batches of `micro` sequences, each micro-batch's
    mean loss scaled by its share of the batch, then clipping. Returns (the batch's loss, the gradient
    norm before clipping: inf/NaN there means a broken step); the update is the caller's."""
    loss_sum = 0.0
    for xm, ym in zip(x.split(micro), y.split(micro)):  # (micro, l) each
        with _autocast(device, tcfg.bf16):
            logits = fwd(xm)  # (micro, l, v)
        loss = _loss(logits, ym) * (xm.shape[0] / tcfg.batch)
        loss.backward()
        loss_sum = loss_sum + loss.detach()
    gnorm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf)
    return float(loss_sum), gnorm.item()  # one sync per step; buys an immediate stop


def train(model: nn.Module, data: Data, tcfg: TrainConfig, log: Callable[[str], None] | None = print,
          start: dict | None = None, checkpoint: Callable[[dict], None] | None = None,
          checkpoint_every: int = 0, plan: Callable[[nn.Module, TrainConfig], int] | None = None) -> TrainResult:
    """Train `model` on `data` for `tcfg.steps` AdamW steps, then evaluate it on the held-out set.

    The model is moved to the device and trained in place. `log` receives progress lines (None: quiet).
    The run stops early with status 'diverged' at the first non-finite loss or gradient norm (that
    step's update is not applied), and reports 'oom' when CUDA runs out of memory.

    Gradient accumulation: each step's batch is drawn whole (the same batches whatever the split),
    then cut into batch / micro_batch micro-batches; each micro-batch's mean loss is scaled by
    micro_batch / batch, so the summed gradients are the whole batch's mean-loss gradient, and clipping
    and the update see exactly what one large batch would give (up to float rounding).

    Keeping on (D27): `checkpoint(state)` receives the training state (`train_state`: the step, the
    optimizer, the data position, the recent losses) every `checkpoint_every` steps and after the last
    one; save it at once, its tensors are the optimizer's own. `start`, such a state, continues a training
    from its step under this `tcfg`'s schedule: with the schedule it was saved under, an interrupted
    training resumed to its planned length equals the uninterrupted one bit for bit. `plan(model, tcfg)`
    picks the micro-batch (default: tcfg.micro_batch, else the whole batch; the workshop's memory planner
    plugs in here on a GPU).
    """
    log = log or (lambda _msg: None)
    data.check(tcfg.seq_len)
    device = resolve_device(tcfg.device)
    set_determinism(device)
    torch.manual_seed(tcfg.seed)  # D17: everything seeded (the model's init has its own seed)
    gen = torch.Generator().manual_seed(tcfg.seed)  # batch order: a function of the seed alone
    t0 = time.perf_counter()
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tcfg.betas,
                            fused=device.type == "cuda")
    fwd = torch.compile(model) if tcfg.compile else model  # D17: optional, per-graph compile cost (DESIGN.md N8)
    params = [p for g in opt.param_groups for p in g["params"]]
    recent = collections.deque(maxlen=max(1, tcfg.log_every))  # last losses, for a smooth final figure
    first = _continue_from(start, opt, gen, recent)
    status, error, step = "ok", "", first
    val_loss, val_ppl = math.inf, math.inf
    progress = _Progress(tcfg, first, log)
    x = y = None
    try:
        micro = plan(model, tcfg) if plan is not None else tcfg.micro_batch or tcfg.batch  # sequences per micro-batch
        for step in range(first, tcfg.steps):
            t_step = time.perf_counter()
            lr = lr_at(step, tcfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = data.get_batch("train", tcfg.batch, tcfg.seq_len, gen, device)  # (b, l) each
            loss_v, gnorm_v = _gradients(fwd, params, x, y, micro, tcfg, device)
            if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
                status = "diverged"
                error = f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient norm'} at step {step}"
                opt.zero_grad(set_to_none=True)  # the broken step's update is never applied
                break
            opt.step()
            opt.zero_grad(set_to_none=True)
            recent.append(loss_v)
            progress.step_done(step, time.perf_counter() - t_step, loss_v, lr)
            if checkpoint is not None and (step + 1 == tcfg.steps or checkpoint_every and (step + 1) % checkpoint_every == 0):
                checkpoint(train_state(step + 1, opt, gen, recent))
        else:
            step = tcfg.steps  # all steps done
            x = y = None
            val_loss, val_ppl = evaluate(model, data, tcfg)
    except torch.OutOfMemoryError as e:
        where = "during evaluation" if step == tcfg.steps else f"at step {step}"
        status, error = "oom", f"out of memory {where}: {str(e).splitlines()[0]}"
    if status == "oom":  # after `except`: the traceback held the frames that hold the tensors
        x = y = None
        opt.zero_grad(set_to_none=True)
        release_memory()
    steps_done = step  # after a break, `step` is the index of the failed step = the steps completed
    result = TrainResult(status=status, steps=steps_done,
                         train_loss=sum(recent) / len(recent) if recent and status == "ok" else math.inf,
                         val_loss=val_loss, val_ppl=val_ppl,
                         bits_per_byte=val_loss / math.log(2) if data.byte_level else None,
                         tokens_per_s=progress.tokens_per_s(steps_done), seconds=time.perf_counter() - t0,
                         error=error)
    log(format_result(result))
    return result


def train_state(step: int, opt: torch.optim.Optimizer, gen: torch.Generator, recent) -> dict:
    """What continuing a training needs besides the weights and the schedule (D27): the steps done, the
    optimizer's moments, the data position (the batch generator's state), torch's RNG and the recent
    losses (the final train loss is their mean). Plain data: it loads with torch.load(weights_only=True)."""
    return {"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "rng": torch.get_rng_state(), "recent": list(recent)}


def _continue_from(start: dict | None, opt, gen: torch.Generator, recent) -> int:
    """Put a saved `train_state` back (None: a fresh training); the step to go on from."""
    if start is None:
        return 0
    opt.load_state_dict(start["optimizer"])
    gen.set_state(start["generator"])
    torch.set_rng_state(start["rng"])
    recent.extend(start["recent"])
    return int(start["step"])


class _Progress:
    """The progress lines every `log_every` steps, and the training throughput (evaluation excluded)."""

    def __init__(self, tcfg: TrainConfig, first: int, log):
        self.tcfg, self.first, self.log = tcfg, first, log
        self.t_train, self.t_log, self.step_log = 0.0, time.perf_counter(), first

    def step_done(self, step: int, seconds: float, loss_v: float, lr: float) -> None:
        tcfg = self.tcfg
        self.t_train += seconds
        if tcfg.log_every and ((step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps):
            now = time.perf_counter()
            tok_s = (step + 1 - self.step_log) * tcfg.batch * tcfg.seq_len / max(now - self.t_log, 1e-9)
            eta = (tcfg.steps - step - 1) * self.t_train / (step + 1 - self.first)
            self.log(f"step {step + 1:>{len(str(tcfg.steps))}}/{tcfg.steps} | loss {loss_v:.4f} | lr {lr:.2e} | "
                     f"{tok_s:,.0f} tok/s | ETA {fmt_time(eta)}")
            self.t_log, self.step_log = now, step + 1

    def tokens_per_s(self, steps_done: int) -> float:
        done = steps_done - self.first
        return done * self.tcfg.batch * self.tcfg.seq_len / self.t_train if self.t_train > 0 else 0.0


def format_result(r: TrainResult) -> str:
    parts = [f"status {r.status}", f"steps {r.steps}", f"train loss {r.train_loss:.4f}",
             f"val loss {r.val_loss:.4f}", f"val ppl {r.val_ppl:.3f}"]
    if r.bits_per_byte is not None:
        parts.append(f"bits/byte {r.bits_per_byte:.4f}")
    parts += [f"{r.tokens_per_s:,.0f} tok/s", f"{r.seconds:.1f} s"]
    return "done: " + " | ".join(parts) + (f" | {r.error}" if r.error else "")


def fmt_time(s: float) -> str:
    """A duration for progress lines and ETAs, everywhere in this project: 5s, 3m07s, 2h05m; '?'
    when unknown (not finite)."""
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


if __name__ == "__main__":  # one genome trained, resumed or sampled: workshop/training.py
    from workshop import training
    sys.exit(training.main())
