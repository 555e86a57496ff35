"""Training and evaluation: how STAR scores one candidate backbone (the paper's §4 and §5; D17).

Every candidate trains under the same budget (`TrainConfig`: steps, batch, length, schedule, seed, so
the same batches) and is scored by its perplexity on the same fixed held-out windows of corpus.py's
`Data`, so different architectures compare. The recipe (D17): AdamW (β 0.9/0.95); weight decay 0.1 on
matrices only, never on parameters tagged `_no_weight_decay` (N7); linear warm-up, then cosine decay
to 10% of the peak lr 8e-4; gradient clipping at 1.0; bf16 autocast on CUDA; optional `torch.compile`.
A non-finite loss or gradient norm stops a run as `diverged`; CUDA out of memory is `oom`.

`train`'s seams (workshop/training.py plugs in): `start` and `checkpoint` keep a training going (D27),
`plan` picks the micro-batch. Shape comments: b batch, l sequence length (seq_len), v vocabulary size.
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
    """D17: linear warm-up (step 0: peak / warmup), then cosine decay to min_lr_ratio · peak at the last step."""
    peak, floor, w = tcfg.lr, tcfg.lr * tcfg.min_lr_ratio, tcfg.warmup_steps
    if step < w:
        return peak * (step + 1) / w
    progress = min(1.0, (step - w) / max(1, tcfg.steps - 1 - w))  # 0 → 1 over the decay phase
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def _is_no_weight_decay(p: torch.Tensor) -> bool:
    # Same test as liv.is_no_weight_decay, inlined so this file works with any nn.Module.
    return getattr(p, "_no_weight_decay", False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups (D17, N7): decay iff ndim >= 2 *and* not tagged (2-D decay rates and filters are)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not _is_no_weight_decay(p) else no_decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def resolve_device(device: str) -> torch.device:
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
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # float64 on the device: one host sync
    for x, y in data.val_batches(tcfg.eval_batches, tcfg.batch, tcfg.seq_len, device, n_windows=tcfg.eval_windows):
        with _autocast(device, tcfg.bf16):
            logits = model(x)  # (b, l, v)
        total = total + _loss(logits, y).double() * y.numel()
        count += y.numel()
    model.train(was_training)
    loss = total.item() / count
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
    """Return freed CUDA memory. Call it *after* an `except` block, whose traceback holds the tensors."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_determinism(device: torch.device) -> None:
    """Deterministic kernels where cheap (docs/workers-and-ray.md); STAR_DETERMINISM=strict makes a missing
    one an error (liv.cumsum then uses matrix products). Sets cuBLAS's workspace before its first call."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=os.environ.get("STAR_DETERMINISM") != "strict")


def _gradients(fwd, params, x, y, micro: int, tcfg: TrainConfig, device) -> tuple[float, float]:
    """One step's gradients in micro-batches, each loss scaled by its share of the batch; (loss, norm)."""
    loss_sum = 0.0
    for xm, ym in zip(x.split(micro), y.split(micro)):  # (micro, l) each
        with _autocast(device, tcfg.bf16):
            logits = fwd(xm)  # (micro, l, v)
        loss = _loss(logits, ym) * (xm.shape[0] / tcfg.batch)
        loss.backward()
        loss_sum = loss_sum + loss.detach()
    gnorm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf)
    loss_v, gnorm_v = torch.stack((loss_sum, gnorm.to(loss_sum.dtype))).tolist()  # one host sync per step:
    return loss_v, gnorm_v                                                         # it buys an immediate stop


def train(model: nn.Module, data: Data, tcfg: TrainConfig, log: Callable[[str], None] | None = print,
          start: dict | None = None, checkpoint: Callable[[dict], None] | None = None,
          checkpoint_every: int = 0, plan: Callable[[nn.Module, TrainConfig], int] | None = None) -> TrainResult:
    """Train `model` in place for `tcfg.steps` AdamW steps, then evaluate it. Seams (D27): `checkpoint`
    gets a `train_state` every `checkpoint_every` steps and after the last (save it at once: its tensors
    are the optimizer's own); `start`, such a state, resumes bit for bit under the schedule it was saved
    with; `plan(model, tcfg)` picks the micro-batch (default: `tcfg.micro_batch`, else the batch)."""
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
    recent = collections.deque(maxlen=max(1, tcfg.log_every))  # last losses, for a smooth final figure
    progress = _Progress(tcfg, _continue_from(start, opt, gen, recent), log)
    val_loss = val_ppl = math.inf
    try:
        status, error = _steps(model, data, tcfg, opt, gen, recent, progress, device, plan, checkpoint, checkpoint_every)
        if status == "ok":
            progress.at = tcfg.steps  # all steps done
            val_loss, val_ppl = evaluate(model, data, tcfg)
    except torch.OutOfMemoryError as e:
        where = "during evaluation" if progress.at == tcfg.steps else f"at step {progress.at}"
        status, error = "oom", f"out of memory {where}: {str(e).splitlines()[0]}"
    if status == "oom":  # after `except`: the traceback held the frames that hold the tensors
        opt.zero_grad(set_to_none=True)
        release_memory()
    result = TrainResult(status=status, steps=progress.at,  # a failed step's index = the steps completed
                         train_loss=sum(recent) / len(recent) if recent and status == "ok" else math.inf,
                         val_loss=val_loss, val_ppl=val_ppl,
                         bits_per_byte=val_loss / math.log(2) if data.byte_level else None,
                         tokens_per_s=progress.tokens_per_s(progress.at), seconds=time.perf_counter() - t0,
                         error=error)
    log(format_result(result))
    return result


def _steps(model, data: Data, tcfg: TrainConfig, opt, gen, recent, progress: "_Progress", device, plan, checkpoint,
           checkpoint_every: int) -> tuple[str, str]:
    """The steps from `progress.at` (the step under way) on: ('ok', '') or ('diverged', why)."""
    fwd = torch.compile(model) if tcfg.compile else model  # D17: optional, per-graph compile cost (DESIGN.md N8)
    params = [p for g in opt.param_groups for p in g["params"]]
    micro = plan(model, tcfg) if plan is not None else tcfg.micro_batch or tcfg.batch  # sequences per micro-batch
    for step in range(progress.at, tcfg.steps):
        progress.at = step
        t_step = time.perf_counter()
        lr = lr_at(step, tcfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = data.get_batch("train", tcfg.batch, tcfg.seq_len, gen, device)  # (b, l) each
        loss_v, gnorm_v = _gradients(fwd, params, x, y, micro, tcfg, device)
        if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
            opt.zero_grad(set_to_none=True)  # the broken step's update is never applied
            return "diverged", f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient norm'} at step {step}"
        opt.step()
        opt.zero_grad(set_to_none=True)
        recent.append(loss_v)
        progress.step_done(step, time.perf_counter() - t_step, loss_v, lr)
        if checkpoint is not None and (step + 1 == tcfg.steps or checkpoint_every and (step + 1) % checkpoint_every == 0):
            checkpoint(train_state(step + 1, opt, gen, recent))
    return "ok", ""


def train_state(step: int, opt: torch.optim.Optimizer, gen: torch.Generator, recent) -> dict:
    """What resuming needs besides weights and schedule (D27); torch.load(weights_only=True) reads it."""
    return {"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "rng": torch.get_rng_state(), "recent": list(recent)}


def _continue_from(start: dict | None, opt, gen: torch.Generator, recent) -> int:
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
        self.at = first  # the step under way (the steps done, once a step fails or all are done)
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
    """A duration for progress lines and ETAs, project-wide: 5s, 3m07s, 2h05m; '?' when not finite."""
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
