"""How the workshop's commands speak: sizes and seeds in one spelling, and bad input as one line on
stderr with exit status 2 (star.py, train.py, genome.py, liv.py, python -m workshop.bench / .after)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from train import fmt_time  # noqa: F401  (durations: the training loop's progress lines spell them so)


def fmt_bytes(n) -> str:
    """Bytes in decimal units, everywhere in this project: 1 kB = 1000 B, 1 MB = 10^6 B (the paper's
    805.3 MB for a 1B Transformer++'s cache is decimal). '-' for None."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


SEED_LIMIT = 2 ** 63  # seeds are 0 <= seed < 2**63: what torch.manual_seed and numpy's generators both take


def seed_arg(text: str) -> int:
    """The command lines' --seed type (star.py, train.py, genome.py): an integer in 0 .. 2**63 - 1."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**63 - 1 (got {seed})")
    return seed


class OneLineParser(argparse.ArgumentParser):
    """The command lines' parser (liv.py, train.py, star.py, bench.py): a bad option is one line on
    stderr and exit status 2, not a usage block."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def check_output_file(path: str, option: str) -> Path:
    """Refuse, before any work, an output file that could not be written: one line naming `option`.
    Writes nothing (a probe file in the nearest existing folder is removed at once)."""
    if not path.strip():
        raise ValueError(f"{option} must not be empty")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    folder = p.parent
    while not folder.exists():  # the folders still missing are created when the file is written
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({e.strerror})") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{option} {path}: the file is not writable")
    return p
