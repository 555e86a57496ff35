"""Your own data for a run (`--data PATH`), beside corpus.py's default corpus and synthetic task:

- a UTF-8 text file (the last 10% of its bytes is validation);
- a folder of text files (whole files held out by corpus.py's every-10th rule);
- a nanoGPT-style folder with `train.bin` and `val.bin` (uint16 token ids, with `--vocab-size`).

Each source is fingerprinted (D23) so that a resume refuses data that changed; bad input is one
DataError line.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import corpus
from corpus import Data, DataError, _bytes_array, _holdout, _join, _sha256


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
        return corpus.shakespeare()
    if path == "synthetic":
        if vocab_size not in (None, 256):
            raise DataError("--vocab-size: --data synthetic is byte text (vocabulary 256); "
                            "--vocab-size is for train.bin/val.bin token folders")
        return corpus.synthetic()
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--data: {path} does not exist (give a UTF-8 text file, a folder of text files, "
                        f"a folder with train.bin/val.bin, or 'synthetic')")
    if p.is_dir() and ((p / "train.bin").exists() or (p / "val.bin").exists()):
        return token_folder(p, vocab_size)
    if vocab_size not in (None, 256):
        raise DataError(f"--data: {path} is byte-level text (vocabulary 256); --vocab-size is for train.bin/val.bin")
    return text_folder(p) if p.is_dir() else text_file(_regular(p))
