"""Shaping the search space (D25: the LIV classes a search samples and mutates) and scaling a found
backbone (D26: a deeper one made of copies), on top of genome.py."""
from __future__ import annotations

from typing import Sequence

import liv
from genome import CLASS, Genome, canonical, check_classes, validate


def parse_classes(text: str) -> tuple[int, ...]:
    """`1,5-9,GConv-2` -> (1, 5, 6, 7, 8, 9): class ids, ranges of ids, and registry names (any case), as
    `python genome.py --classes` prints them."""
    names = {s.name.lower(): c for c, s in liv.REGISTRY.items()}
    out = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        if part.isdigit():
            out.append(int(part))
        elif sep and lo.strip().isdigit() and hi.strip().isdigit() and int(lo) <= int(hi):
            out += range(int(lo), int(hi) + 1)
        elif part.lower() in names:
            out.append(names[part.lower()])
        else:
            raise ValueError(f"class {part!r}: expected an id 1..{liv.n_classes()}, a range such as 5-8, or a name "
                             f"({', '.join(s.name for s in liv.REGISTRY.values())})")
    return check_classes(out)


def uses_only(g: Genome, classes: Sequence[int] | None) -> bool:
    return classes is None or all(r[CLASS] in classes for r in g.livs)


def repeat(g: Genome, times: int, share_across: bool = False) -> Genome:
    """D26: a deeper backbone made of `times` copies of `g` (its canonical form), one after another.

    Each copy's group ids are renumbered into its own range, so that a copy shares only within itself:
    the copies are independent blocks, and the counts are exact (parameters: `times` x the non-embedding
    parameters less the final norm, plus the final norm and the embedding; cache: `times` x the cache).
    Writing the genome's text twice would not do this: the second copy's ids would name the first
    copy's groups. With `share_across`, every LIV of a later copy uses the featurizer weights of its
    counterpart's featurizer owner in the first copy (D9: the same class), like weight-tied repeated
    blocks; feature groups (D10, what the cache holds) stay within each copy."""
    if not isinstance(times, int) or times < 1:
        raise ValueError(f"repeat: times must be an integer >= 1 (got {times!r})")
    base = canonical(g)
    d = base.depth
    rows = [(c, fg if share_across and k else fg + k * d, 2 if share_across and k else fs, sg + k * d, ss)
            for k in range(times) for (c, fg, fs, sg, ss) in base.livs]
    return canonical(validate(Genome(tuple(rows))))  # ids offset by k x depth skip numbers canonical ids do not
