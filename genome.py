"""The STAR genome: an integer encoding of a backbone, and how it decodes into a model (DESIGN.md §4).

STAR describes an architecture on three levels (D8):
    featurizer genome  per feature group of a class: how the featurizer computes C, B, V or S (``liv.FG``).
    operator genome    per class, 5 digits: featurizer class; token mixing, sparsity, nonlinearity and
                       channel mixing of the LIV's own linear map T(x).
    backbone genome    one 5-tuple per LIV, ``depth`` (fixed) in all: the only level evolved (the first two are
                       fixed tables of the option pool, ``liv.REGISTRY``). Its five entries:
    entry  name                     values
    1      class                    1-17 (liv.REGISTRY: 1 SA-1 ... 9 GMemless ... 17 GConv-2-Diff)
    2      featurizer group         1-depth
    3      featurizer strategy      1 own weights · 2 use the group owner's featurizer weights (D9)
    4      feature-group group      1-depth
    5      feature-group strategy   1 none · 2 share B,V · 3 share C,B · 4 share C,B,V (D10)

Sharing. A *group* (at either level) is the LIVs with the same group id; its **owner** is its first
member. A later member with a sharing strategy takes from the owner its featurizer *weights* (D9, applied
to its own input) or its *computed* feature groups ``liv.SHARED_GROUPS[s]`` (D10, e.g. cross-layer KV
sharing); strategy 1 shares nothing, whatever the group id. Legality:
    D9   featurizer sharing needs the owner's class exactly.
    D10  feature-group sharing needs equal, non-None ``REGISTRY[c].share_key`` (same family, head
         layout, state size, differential status); D6: GMemless (class 9) allows strategy 1 only.

Variation (D18) keeps genomes legal where it can; ``repair`` (D11) fixes and counts the rest. ``canonical``
(D12) picks one genome per architecture; ``plans`` decodes a genome into ``liv.LayerPlan``s for
``build_model``. Text form (D13): ``1.1.1.1.1-9.2.1.2.1``, or the paper's compact ``21211-31112``.
"""
from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

import evolve
import liv

# --- Entries of the backbone genome ------------------------------------------------------------------
ENTRY_NAMES = ("class", "featurizer group", "featurizer strategy", "feature-group group", "feature-group strategy")
CLASS, FEAT_GROUP, FEAT_STRATEGY, FG_GROUP, FG_STRATEGY = range(5)  # positions inside a 5-tuple
FEATURIZER_STRATEGIES = {1: "own weights", 2: "share all featurizer weights"}  # D9
FG_STRATEGIES = {1: "none", 2: "share B,V", 3: "share C,B", 4: "share C,B,V"}  # D10
Row = tuple[int, int, int, int, int]


def entry_range(entry: int, depth: int) -> tuple[int, int]:
    """Full range (inclusive) of one entry, independent of the class (D11 checks values against it)."""
    return ((1, liv.n_classes()), (1, depth), (1, 2), (1, depth), (1, 4))[entry]


def legal_fg_strategies(class_id: int) -> tuple[int, ...]:
    """D6: a class that shares no feature groups (share_key None: GMemless) only allows strategy 1."""
    return (1, 2, 3, 4) if liv.REGISTRY[class_id].share_key is not None else (1,)


def legal_values(entry: int, class_id: int, depth: int) -> tuple[int, ...]:
    """Values of `entry` that are legal on their own for an LIV of `class_id` (links are checked apart)."""
    if entry == FG_STRATEGY:
        return legal_fg_strategies(class_id)
    lo, hi = entry_range(entry, depth)
    return tuple(range(lo, hi + 1))


def _fmt_allowed(values: Sequence[int]) -> str:
    if len(values) > 2 and list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def _where(i: int, entry: int) -> str:
    return f"LIV {i + 1}, entry {entry + 1} ({ENTRY_NAMES[entry]})"


# --- The genome value type (D13) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Genome:
    """One 5-tuple per LIV, compared by value; only the shape is checked here (`validate` checks values)."""
    livs: tuple[Row, ...]

    def __post_init__(self):
        rows = []
        for i, row in enumerate(self.livs):
            row = tuple(operator.index(v) for v in row)  # accepts numpy ints; rejects floats and str
            if len(row) != 5:
                raise ValueError(f"LIV {i + 1}: a backbone genome has 5 entries per LIV, got {len(row)}")
            rows.append(row)
        if not rows:
            raise ValueError("a genome needs at least one LIV")
        object.__setattr__(self, "livs", tuple(rows))

    @property
    def depth(self) -> int:
        return len(self.livs)

    def flat(self) -> list[int]:
        """The 5·depth integers that crossover splices (D18)."""
        return [v for row in self.livs for v in row]

    @classmethod
    def from_flat(cls, ints: Iterable[int]) -> Genome:
        ints = [operator.index(v) for v in ints]
        if not ints or len(ints) % 5:
            raise ValueError(f"a flat genome has 5·depth integers, got {len(ints)}")
        return cls(tuple(tuple(ints[k:k + 5]) for k in range(0, len(ints), 5)))

    def __str__(self) -> str:
        return "-".join(".".join(map(str, row)) for row in self.livs)  # D13

    def compact(self) -> str:
        """The paper's compact form (`21211-31112`); only defined when every entry is one digit."""
        if any(not 0 <= v <= 9 for v in self.flat()):
            raise ValueError(f"compact form needs every entry to be one digit: {self}")
        return "-".join("".join(map(str, row)) for row in self.livs)

    @classmethod
    def parse(cls, text: str, check: bool = True) -> Genome:
        """Read `1.1.1.1.1-9.2.1.2.1` or the compact `11111-92121`; with `check`, also validate (D11)."""
        s = text.strip()
        if not s:
            raise ValueError("empty genome string; expected e.g. '1.1.1.1.1-9.2.1.2.1' or '11111-92121'")
        dotted = "." in s
        rows = []
        for i, part in enumerate(s.split("-")):
            part = part.strip()
            if dotted:
                fields = part.split(".")
                if len(fields) != 5:
                    raise ValueError(f"LIV {i + 1}: expected 5 entries joined by '.', got {part!r}")
            else:
                if len(part) != 5:
                    raise ValueError(f"LIV {i + 1}: expected 5 digits (compact form) or 5 entries joined "
                                     f"by '.', got {part!r}")
                fields = list(part)
            for e, f in enumerate(fields):
                f = f.strip()
                if not (f.isascii() and f.isdigit()):  # ASCII 0-9 only (int() takes other scripts' digits)
                    raise ValueError(f"{_where(i, e)}: expected a positive integer, got {f!r}")
                if len(f.lstrip("0")) > 9:  # no entry is that large; and int() refuses 4300+ digits
                    raise ValueError(f"{_where(i, e)}: a {len(f)}-digit number is out of range")
            rows.append(tuple(int(f) for f in fields))
        g = cls(tuple(rows))
        if check:
            validate(g)
        return g


# --- Owners, validation, repair (D9-D11) -------------------------------------------------------------
def _owners(group_ids: Sequence[int]) -> list[int]:
    """Index of each LIV's group owner: the first LIV carrying the same group id."""
    first: dict[int, int] = {}
    return [first.setdefault(gid, i) for i, gid in enumerate(group_ids)]


def _featurizer_compatible(owner_class: int, member_class: int) -> bool:
    return owner_class == member_class  # D9: the weights must fit exactly


def _fg_compatible(owner_class: int, member_class: int) -> bool:
    key = liv.REGISTRY[owner_class].share_key  # D10 / D6
    return key is not None and key == liv.REGISTRY[member_class].share_key


# (group entry, strategy entry, compatibility, what the link shares) for the two sharing levels.
_LEVELS: tuple[tuple[int, int, Callable[[int, int], bool], str], ...] = (
    (FEAT_GROUP, FEAT_STRATEGY, _featurizer_compatible, "D9: featurizer weights are shared only within one class"),
    (FG_GROUP, FG_STRATEGY, _fg_compatible,
     "D10: feature groups are shared only between classes with the same family, head layout, state size "
     "and differential status; GMemless shares none"),
)


def _bad_value(rows: Sequence[Row], i: int, entry: int) -> bool:
    depth = len(rows)
    v = rows[i][entry]
    if entry == FG_STRATEGY:
        return v not in legal_fg_strategies(rows[i][CLASS])
    lo, hi = entry_range(entry, depth)
    return not lo <= v <= hi


def _bad_links(rows: Sequence[Row], level: int) -> list[tuple[int, int]]:
    """(member, owner) pairs whose link at `level` (0 featurizer, 1 feature group) is illegal."""
    ge, se, ok, _ = _LEVELS[level]
    owners = _owners([r[ge] for r in rows])
    return [(i, o) for i, o in enumerate(owners)
            if o != i and rows[i][se] != 1 and not ok(rows[o][CLASS], rows[i][CLASS])]


def validate(g: Genome) -> Genome:
    """Raise ValueError naming the first LIV and entry that is out of range or illegal; return g."""
    rows = g.livs
    for i, row in enumerate(rows):
        for e in (CLASS, FEAT_GROUP, FEAT_STRATEGY, FG_GROUP, FG_STRATEGY):  # class first: entry 5 needs it
            if _bad_value(rows, i, e):
                allowed = legal_values(e, row[CLASS], g.depth)
                why = (f" for {liv.REGISTRY[row[CLASS]].name} (D6: it shares no feature groups)"
                       if e == FG_STRATEGY and len(allowed) == 1 else "")
                raise ValueError(f"{_where(i, e)}: got {row[e]}, allowed {_fmt_allowed(allowed)}{why}")
    for level, (ge, se, _, rule) in enumerate(_LEVELS):
        for i, o in _bad_links(rows, level):
            raise ValueError(
                f"{_where(i, ge)}: group {rows[i][ge]} is owned by LIV {o + 1} "
                f"({liv.REGISTRY[rows[o][CLASS]].name}), which LIV {i + 1} "
                f"({liv.REGISTRY[rows[i][CLASS]].name}) cannot share from with {ENTRY_NAMES[se]} {rows[i][se]} "
                f"({rule}); allowed: {ENTRY_NAMES[se]} 1, or a group whose owner is compatible")
    return g


def is_valid(g: Genome) -> bool:
    try:
        validate(g)
    except ValueError:
        return False
    return True


def repair(g: Genome, rng: np.random.Generator, classes: Sequence[int] | None = None) -> tuple[Genome, int]:
    """D11: (valid genome, entries changed): illegal values re-sampled, illegal links moved to a free group id."""
    rows = [list(r) for r in g.livs]
    depth = g.depth
    classes = check_classes(classes)
    for i, row in enumerate(rows):
        for e in (CLASS, FEAT_GROUP, FEAT_STRATEGY, FG_GROUP, FG_STRATEGY):
            if e == CLASS and classes is not None and row[CLASS] not in classes:
                row[CLASS] = int(classes[rng.integers(len(classes))])
            elif _bad_value(rows, i, e):
                allowed = legal_values(e, row[CLASS], depth)
                row[e] = int(allowed[rng.integers(len(allowed))])
    for level, (ge, _, _, _) in enumerate(_LEVELS):
        for i, _owner in _bad_links(rows, level):  # computed once: moving i cannot break or heal others
            used = {r[ge] for r in rows}
            rows[i][ge] = min(set(range(1, depth + 1)) - used)
    fixed = Genome(tuple(tuple(r) for r in rows))
    changed = sum(a != b for a, b in zip(g.flat(), fixed.flat()))  # entries, each counted once
    return fixed, changed


# --- Decoding and the canonical form (D12) -----------------------------------------------------------
def _fed_class(class_id: int) -> int:
    """The lowest equivalent class of an LIV fed all its groups (SA-2 fed C, B and V builds as SA-1)."""
    s = liv.REGISTRY[class_id]
    return min(c for c, t in liv.REGISTRY.items()
               if t.share_key == s.share_key and t.groups == s.groups and not liv.featurizer_needed(c, frozenset()))


def plans(g: Genome) -> list[liv.LayerPlan]:
    """Decode a valid genome into LayerPlans (0-based), normalising away what builds nothing (D12, DESIGN.md §11)."""
    validate(g)
    rows = g.livs
    f_own = _owners([r[FEAT_GROUP] for r in rows])
    s_own = _owners([r[FG_GROUP] for r in rows])
    fo, so, shared = [], [], []
    for i, r in enumerate(rows):
        fo.append(f_own[i] if f_own[i] != i and r[FEAT_STRATEGY] == 2 else i)  # D9
        sharing = s_own[i] != i and r[FG_STRATEGY] != 1  # D10
        so.append(s_own[i] if sharing else i)
        shared.append(liv.SHARED_GROUPS[r[FG_STRATEGY]] if sharing else frozenset())
    computes = [frozenset(x for x in "CBV" if x in liv.REGISTRY[r[CLASS]].groups) - shared[i] for i, r in enumerate(rows)]
    needs = [liv.featurizer_needed(r[CLASS], computes[i]) for i, r in enumerate(rows)]
    first_need: dict[int, int] = {}  # featurizer group's genome owner -> first member needing weights
    for i in range(len(rows)):
        if needs[i]:
            fo[i] = first_need.setdefault(fo[i], i)
        else:
            fo[i] = i
    return [liv.LayerPlan(r[CLASS] if needs[i] else _fed_class(r[CLASS]), fo[i], so[i], shared[i])
            for i, r in enumerate(rows)]


def from_plans(ps: Sequence[liv.LayerPlan]) -> Genome:
    """D12: the canonical genome of plans: group ids in order of first use, strategy 1 but for sharers."""
    strategy_of = {frozenset(v): k for k, v in liv.SHARED_GROUPS.items()}
    def labels(owner_of: Sequence[int]) -> list[int]:
        label: dict[int, int] = {}
        return [label.setdefault(o, len(label) + 1) for o in owner_of]
    fg = labels([p.featurizer_owner for p in ps])
    sg = labels([p.share_owner for p in ps])
    rows = []
    for i, p in enumerate(ps):
        fs = 2 if p.featurizer_owner != i else 1
        ss = strategy_of[frozenset(p.shared_groups)] if p.share_owner != i else 1
        rows.append((p.class_id, fg[i], fs, sg[i], ss))
    return Genome(tuple(rows))


def canonical(g: Genome) -> Genome:
    """D12: one genome per architecture, a function of `plans(g)` only (idempotent, relabelling-invariant)."""
    return from_plans(plans(g))


def canonical_str(g: Genome) -> str:
    return str(canonical(g))


# --- The class set a search draws from (D25; workshop/space.py reads it from the command line) -------
def check_classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    """A set of LIV classes as a sorted tuple (None: all)."""
    if classes is None:
        return None
    out = tuple(sorted({operator.index(c) for c in classes}))
    if not out or not all(1 <= c <= liv.n_classes() for c in out):
        raise ValueError(f"a class set needs at least one class, each in 1..{liv.n_classes()} (got {list(classes)})")
    return out


# --- Variation (D18): legal by construction, as "mutations respect the constraints of the genome position" ---
SHARE_RATE = 0.1  # D18: chance that a sampled LIV joins an earlier compatible group, at each level
CROSSOVER_CUT = "liv"  # D18: "liv" cuts between LIVs that no link spans; "anywhere" cuts between integers


def _sharing_strategies(strategy_entry: int, class_id: int) -> tuple[int, ...]:
    """The strategies that share something (featurizer 2; feature group 2-4)."""
    return (2,) if strategy_entry == FEAT_STRATEGY else tuple(s for s in legal_fg_strategies(class_id) if s != 1)


def _level_of(entry: int) -> int:
    return 0 if entry in (FEAT_GROUP, FEAT_STRATEGY) else 1


def _fresh_id(rows: Sequence[Sequence[int]], entry: int, i: int) -> int:
    """A group id for LIV i that no other LIV uses (its current one when nobody else uses it)."""
    used = {r[entry] for j, r in enumerate(rows) if j != i}
    return rows[i][entry] if rows[i][entry] not in used else min(set(range(1, len(rows) + 1)) - used)


def _joinable(rows: Sequence[Sequence[int]], level: int, i: int, class_id: int) -> list[int]:
    """Group ids LIV i of class `class_id` may join at `level`: earlier groups with a compatible owner."""
    ge, _, ok, _ = _LEVELS[level]
    owners = _owners([r[ge] for r in rows])
    return sorted({rows[o][ge] for o in set(owners[:i]) if ok(rows[o][CLASS], class_id)})


def _drop_illegal_links(rows: list[list[int]]) -> None:
    """Keep every link that is legal, move every member with an illegal one to a fresh group. In place."""
    for level, (ge, _, _, _) in enumerate(_LEVELS):
        while bad := _bad_links(rows, level):
            rows[bad[0][0]][ge] = _fresh_id(rows, ge, bad[0][0])


def random_genome(depth: int, rng: np.random.Generator, share_rate: float = SHARE_RATE,
                  classes: Sequence[int] | None = None) -> Genome:
    """A legal random genome (D18): each LIV joins, at rate ``share_rate``, an earlier featurizer group (D9)
    and a compatible feature-group group (D10); open classes are drawn from ``classes`` (D25; None: all)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not 0.0 <= share_rate <= 1.0:
        raise ValueError(f"share_rate must be in [0, 1], got {share_rate}")
    classes = check_classes(classes)
    rows: list[list[int]] = []
    for i in range(depth):
        row = [0, i + 1, 1, i + 1, 1]  # id i+1 is free: LIV j < i uses j+1 or an earlier id
        f_owners = sorted(set(_owners([r[FEAT_GROUP] for r in rows])))
        if f_owners and rng.random() < share_rate:  # D9: take the owner's class and its weights
            o = f_owners[rng.integers(len(f_owners))]
            row[CLASS], row[FEAT_GROUP], row[FEAT_STRATEGY] = rows[o][CLASS], rows[o][FEAT_GROUP], 2
        key = liv.REGISTRY[row[CLASS]].share_key if row[CLASS] else None
        s_owners = sorted(o for o in set(_owners([r[FG_GROUP] for r in rows]))
                          if liv.REGISTRY[rows[o][CLASS]].share_key is not None
                          and (not row[CLASS] or liv.REGISTRY[rows[o][CLASS]].share_key == key))
        if s_owners and rng.random() < share_rate:  # D10: a class with the owner's share key
            o = s_owners[rng.integers(len(s_owners))]
            if not row[CLASS]:
                peers = [c for c, s in liv.REGISTRY.items() if s.share_key == liv.REGISTRY[rows[o][CLASS]].share_key
                         and (classes is None or c in classes)]  # the owner's class is always one
                row[CLASS] = peers[rng.integers(len(peers))]
            strategies = _sharing_strategies(FG_STRATEGY, row[CLASS])
            row[FG_GROUP], row[FG_STRATEGY] = rows[o][FG_GROUP], strategies[rng.integers(len(strategies))]
        if not row[CLASS]:
            row[CLASS] = int(rng.integers(1, liv.n_classes() + 1)) if classes is None else classes[rng.integers(len(classes))]
        rows.append(row)
    return validate(Genome(tuple(tuple(r) for r in rows)))


def mutate(g: Genome, rng: np.random.Generator, p: float = 0.1, classes: Sequence[int] | None = None) -> Genome:
    """D18: each entry mutates at rate p to another value legal at its position: a valid genome stays valid.
    A class change takes its featurizer-sharing partners along; joining with strategy 1 draws a sharing one."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mutation probability must be in [0, 1], got {p}")
    classes = check_classes(classes)
    legal = is_valid(g)  # a crossover child may not be: then nothing is fixed here, `repair` does it
    rows = [list(r) for r in g.livs]
    for i, e in zip(*np.nonzero(rng.random((g.depth, 5)) < p)):
        i, e = int(i), int(e)
        row = rows[i]
        if e == CLASS:
            options = [c for c in range(1, liv.n_classes() + 1) if c != row[CLASS] and (classes is None or c in classes)]
            if not options:
                continue  # one class allowed: no other legal value
            new = options[rng.integers(len(options))]
            owner = _owners([r[FEAT_GROUP] for r in rows])
            linked = i == owner[i] or row[FEAT_STRATEGY] == 2
            for j in range(g.depth):
                if j == i or (linked and owner[j] == owner[i] and (j == owner[j] or rows[j][FEAT_STRATEGY] == 2)):
                    rows[j][CLASS] = new
                    if rows[j][FG_STRATEGY] not in legal_fg_strategies(new):
                        rows[j][FG_STRATEGY] = 1  # D6: GMemless shares no feature groups
        elif e in (FEAT_GROUP, FG_GROUP):
            se = e + 1  # the strategy entry follows its group entry
            fresh = _fresh_id(rows, e, i)
            options = [gid for gid in _joinable(rows, _level_of(e), i, row[CLASS]) + [fresh] if gid != row[e]]
            if not options:
                continue  # alone, with nothing to join: no other legal value
            row[e] = options[rng.integers(len(options))]
            if row[e] != fresh and row[se] == 1:
                strategies = _sharing_strategies(se, row[CLASS])
                row[se] = strategies[rng.integers(len(strategies))]
        else:
            ge = e - 1
            owner = _owners([r[ge] for r in rows])[i]
            allowed = legal_values(e, row[CLASS], g.depth)
            if owner != i and not _LEVELS[_level_of(e)][2](rows[owner][CLASS], row[CLASS]):
                allowed = (1,)
            options = [s for s in allowed if s != row[e]]
            if not options:
                continue
            row[e] = options[rng.integers(len(options))]
        if legal:
            _drop_illegal_links(rows)
    return Genome(tuple(tuple(r) for r in rows))


def anchored(g: Genome) -> Genome:
    """Each group id rewritten as 1 + its owner's index: same plans; what crossover splices (D18)."""
    rows = [list(r) for r in g.livs]
    for ge in (FEAT_GROUP, FG_GROUP):
        for i, o in enumerate(_owners([r[ge] for r in g.livs])):
            rows[i][ge] = o + 1
    return Genome(tuple(tuple(r) for r in rows))


def _spans(g: Genome) -> set[int]:
    """LIV boundaries (b = cut before LIV b) that a sharing link of g's genes crosses: owner < b <= member,
    for every member whose strategy links it to its group's owner, used by the decoded model or not (a
    link the plans drop, e.g. to an owner fed all its groups, still constrains what repair accepts)."""
    crossed = set()
    for ge, se, _, _ in _LEVELS:
        for i, o in enumerate(_owners([r[ge] for r in g.livs])):
            if o != i and g.livs[i][se] != 1:
                crossed.update(range(o + 1, i + 1))
    return crossed


def crossover(a: Genome, b: Genome, rng: np.random.Generator, k: int = 2, cut: str = CROSSOVER_CUT) -> Genome:
    """k-point crossover (D18) of the `anchored` parents: one child, a's segment first, not repaired. cut="liv"
    cuts at LIV boundaries no sharing link crosses (any when none is free); "anywhere" between integers."""
    if a.depth != b.depth:
        raise ValueError(f"crossover needs equal depths, got {a.depth} and {b.depth}")
    if cut not in ("liv", "anywhere"):
        raise ValueError(f"crossover cut must be 'liv' or 'anywhere', got {cut!r}")
    fa, fb = anchored(a).flat(), anchored(b).flat()
    n = len(fa)
    if cut == "anywhere":
        gaps = np.arange(1, n)
    else:
        boundaries = set(range(1, a.depth))
        free = sorted(boundaries - _spans(a) - _spans(b))
        gaps = 5 * np.array(free or sorted(boundaries), dtype=int)
    if len(gaps) == 0:
        return Genome.from_flat(fa)  # depth 1 cut between LIVs: nothing to cross
    cuts = np.sort(rng.choice(gaps, size=min(k, len(gaps)), replace=False))
    parent = np.searchsorted(cuts, np.arange(n), side="right") % 2  # segment number mod 2: 0 = a, 1 = b
    return Genome.from_flat([fb[j] if parent[j] else fa[j] for j in range(n)])


# --- Baselines (D15) ---------------------------------------------------------------------------------
SA1, REC1, GMEMLESS = 1, 5, 9


def variation(depth: int, share_rate: float = SHARE_RATE, classes: Sequence[int] | None = None,
              cut: str = CROSSOVER_CUT) -> evolve.Variation:
    """How genomes breed in NSGA-II (D18), inside the class set `classes` (D25), keyed by canonical form (D12)."""
    return evolve.Variation(
        sample=lambda rng: random_genome(depth, rng, share_rate=share_rate, classes=classes),
        crossover=lambda a, b, rng: crossover(a, b, rng, cut=cut),
        mutate=mutate if classes is None else lambda g, rng: mutate(g, rng, classes=classes),
        repair=repair if classes is None else lambda g, rng: repair(g, rng, classes=classes),
        encode=str, decode=Genome.parse, key=canonical_str)


def _unshared(classes: Sequence[int]) -> Genome:
    """Every LIV in its own groups with strategy 1: no sharing of any kind (already canonical)."""
    return Genome(tuple((c, i + 1, 1, i + 1, 1) for i, c in enumerate(classes)))


def _need_even(depth: int, name: str) -> int:
    if not isinstance(depth, int) or depth < 2 or depth % 2:
        raise ValueError(f"{name} needs an even depth >= 2 (mixer + GMemless pairs), got {depth}")
    return depth // 2


def transformer_pp(depth: int) -> Genome:
    """Transformer++ (Llama): [SA-1, GMemless] × depth/2 (D3, D15)."""
    m = _need_even(depth, "transformer++")
    return _unshared([SA1, GMEMLESS] * m)


def striped_mamba(depth: int) -> Genome:
    """StripedMamba (D15): depth/2 mixers, each then GMemless; Rec-1, SA-1 at mixer 3 of six (DESIGN.md §11)."""
    m = _need_even(depth, "striped-mamba")
    mixers = [SA1 if j % 6 == min(3, m - 1) else REC1 for j in range(m)]
    return _unshared([c for x in mixers for c in (x, GMEMLESS)])


BASELINES: dict[str, Callable[[int], Genome]] = {"transformer++": transformer_pp, "striped-mamba": striped_mamba}


# --- Building and counting ---------------------------------------------------------------------------
def _plans_for(g, cfg: liv.ModelConfig) -> list[liv.LayerPlan]:
    """The layer plans of a genome, or plans already decoded with `plans(g)` (one decode per candidate)."""
    ps = plans(g) if isinstance(g, Genome) else list(g)
    if cfg.depth != len(ps):
        raise ValueError(f"cfg.depth={cfg.depth} but the genome has {len(ps)} LIVs")
    return ps


def build_model(g: Genome | list[liv.LayerPlan], cfg: liv.ModelConfig, seed: int = 0) -> torch.nn.Module:
    """Decode `g` into a liv.Backbone; same genome + seed -> same weights, global RNG untouched (forked)."""
    ps = _plans_for(g, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return liv.Backbone(cfg, ps)


def count_params(g: Genome | list[liv.LayerPlan], cfg: liv.ModelConfig) -> dict[str, int]:
    """Unique parameters (shared tensors and the tied embedding once), counted on the meta device."""
    ps = _plans_for(g, cfg)
    with torch.device("meta"):
        model = liv.Backbone(cfg, ps)
    unique = {id(p): p.numel() for p in model.parameters()}  # identity: a shared tensor counts once
    total = sum(unique.values())
    return dict(total=total, non_embedding=total - cfg.vocab_size * cfg.d_model)


def cache_bytes(g: Genome | list[liv.LayerPlan], cfg: liv.ModelConfig, seq_len: int = 4096, bytes_per_element: int = 2) -> int:
    """D7: bytes a decoder keeps for batch 1 and T = ``seq_len`` tokens, by DESIGN.md §3.1's formulas (tests
    check them against liv.py's allocation); r = 2 if differential (D5), k = cfg.short_conv:
        SA        T·r·H_kv·P keys if it computes B, T·H_kv·P values if it computes V (D10)
        Rec       its state r·H·P·N
        GConv     the stream B⊙V unless received: k-1 values, or T (GConv-2, or read by one)
        GMemless  nothing; and every class (kernel-1)·channels per computed group with token mixing 3"""
    ps = _plans_for(g, cfg)
    d, H, P, k, T = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.short_conv, seq_len
    read_whole = {p.share_owner for p in ps if liv.REGISTRY[p.class_id].long_conv and {"B", "V"} <= p.shared_groups}
    total = 0
    for i, p in enumerate(ps):
        s = liv.REGISTRY[p.class_id]
        r = 2 if s.differential else 1
        own = {x for x in "CBV" if x in s.groups} - p.shared_groups
        tails = (s.conv_kernel or k) - 1  # per channel of a group with token mixing 3 (SA-2, Rec, GConv-2)
        conv = {x for x in own if s.featurizer[x].token_mixing == 3}
        if s.family == "SA":
            hk = liv.kv_heads(cfg, s)
            width = {"C": r * H * P, "B": r * hk * P, "V": hk * P}
            total += T * (width["B"] * ("B" in own) + width["V"] * ("V" in own))
        elif s.family == "Rec":
            width = {"C": r * s.state, "B": r * s.state, "V": d}
            total += r * H * P * s.state
        elif s.family == "GConv":
            width = {"C": r * d, "B": r * d, "V": d}
            if not {"B", "V"} <= p.shared_groups:
                total += r * d * (T if (s.long_conv or i in read_whole) else k - 1)
        else:
            width = {}
        total += tails * sum(width[x] for x in conv)
    return total * bytes_per_element


if __name__ == "__main__":  # pictures, counts and the option pool: workshop/describe.py
    from workshop import describe
    sys.exit(describe.genome_main())
