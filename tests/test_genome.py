"""Tests for genome.py: the backbone genome, its text form, repair, canonical form, variation,
baselines, and decoding into a model (DESIGN.md §4, D8-D15, §10).

Property tests draw depths 1-12 and every class 1-17; the Hypothesis profile ('ci' / 'dev') comes from
conftest.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import genome as G
import liv
from genome import Genome
from workshop import describe, space

DEPTHS = st.integers(1, 12)
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def raw_genomes(draw, depth=DEPTHS, wide: bool = False, classes=None, linked: bool | None = None) -> Genome:
    """Any genome in shape; values in each entry's full range, or (wide) also out of range.

    Uniform group ids over 1..depth rarely put two compatible LIVs in one group, so half the draws are
    `linked`: at most three classes and group ids in 1..3, which makes sharing links common.
    """
    d = draw(depth) if isinstance(depth, st.SearchStrategy) else depth
    if linked is None:
        linked = draw(st.booleans())
    if linked and classes is None:
        classes = draw(st.lists(st.integers(1, liv.n_classes()), min_size=1, max_size=3))
    rows = []
    for _ in range(d):
        row = []
        for e in range(5):
            lo, hi = G.entry_range(e, d)
            if e in (G.FEAT_GROUP, G.FG_GROUP) and linked:
                hi = min(hi, 3)
            if e == G.CLASS and classes is not None:
                row.append(draw(st.sampled_from(classes)))
            else:
                row.append(draw(st.integers(lo - 2, hi + 3) if wide else st.integers(lo, hi)))
        rows.append(tuple(row))
    return Genome(tuple(rows))


@st.composite
def valid_genomes(draw, depth=DEPTHS, classes=None, linked: bool | None = None) -> Genome:
    g = draw(raw_genomes(depth=depth, classes=classes, linked=linked))
    return G.repair(g, np.random.default_rng(draw(SEEDS)))[0]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models here are tiny: with more threads, OpenMP fan-out costs more than it saves, and on a
    busy 2-core machine its barriers made forward+backward ~40x slower (0.7 s vs 0.016 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def n_diff(a: Genome, b: Genome) -> int:
    return sum(x != y for x, y in zip(a.flat(), b.flat()))


# ----------------------------------------------------------------------------------------------------
# Repair (D11)
# ----------------------------------------------------------------------------------------------------


def assert_repaired(raw: Genome, seed: int) -> Genome:
    g, n = G.repair(raw, rng_of(seed))
    G.validate(g)  # must not raise
    assert g.depth == raw.depth
    assert n == n_diff(raw, g)  # the count is the number of entries changed
    assert (n == 0) == G.is_valid(raw)  # a valid genome is left alone, an invalid one is not
    g2, n2 = G.repair(g, rng_of(seed + 1))
    assert (g2, n2) == (g, 0)  # idempotent
    return g


@given(raw_genomes(wide=True), SEEDS)
def test_repair_any_genome_gives_valid_and_is_idempotent(raw, seed):
    assert_repaired(raw, seed)


@given(DEPTHS, SEEDS)
def test_random_mutated_crossed_genomes_repair_to_valid(depth, seed):
    rng = rng_of(seed)
    a, b = G.random_genome(depth, rng), G.random_genome(depth, rng)
    G.validate(a)
    G.validate(b)
    for child in (G.mutate(a, rng, p=0.1), G.mutate(a, rng, p=0.5), G.crossover(a, b, rng, k=2),
                  G.crossover(a, b, rng, k=5, cut="anywhere"),
                  G.mutate(G.crossover(a, b, rng, cut="anywhere"), rng, p=0.5)):  # the loop's order
        assert child.depth == depth
        assert_repaired(child, seed)


@given(raw_genomes(wide=True), SEEDS)
def test_repaired_links_are_all_legal(raw, seed):
    """An illegal link is removed, never kept: every sharing link in the plans is legal (D9, D10)."""
    g, _ = G.repair(raw, rng_of(seed))
    for i, p in enumerate(G.plans(g)):
        assert p.featurizer_owner <= i and p.share_owner <= i
        if p.featurizer_owner != i:
            assert g.livs[p.featurizer_owner][0] == p.class_id
        if p.share_owner != i:
            key = liv.REGISTRY[p.class_id].share_key
            assert key is not None and key == liv.REGISTRY[g.livs[p.share_owner][0]].share_key
            assert p.shared_groups in set(liv.SHARED_GROUPS.values()) - {frozenset()}
        else:
            assert p.shared_groups == frozenset()


def test_illegal_feature_group_link_is_removed():
    # SA-1 owns feature-group group 1; Rec-1 asks for its B,V (strategy 2): incompatible (D10).
    raw = Genome(((1, 1, 1, 1, 1), (5, 2, 1, 1, 2)))
    with pytest.raises(ValueError, match=r"LIV 2, entry 4 \(feature-group group\)"):
        G.validate(raw)
    g, n = G.repair(raw, rng_of(0))
    assert n == 1 and g.livs[1][3] != 1  # moved to a fresh group id, strategy left alone
    assert g.livs[1][3] == 2  # the smallest free id
    assert [p.share_owner for p in G.plans(g)] == [0, 1]
    assert all(p.shared_groups == frozenset() for p in G.plans(g))


def test_illegal_featurizer_link_is_removed():
    # SA-1 and SA-1-Diff: same family, different class -> featurizer weights cannot be shared (D9).
    raw = Genome(((1, 1, 1, 1, 1), (9, 2, 1, 2, 1), (10, 1, 2, 3, 1)))
    with pytest.raises(ValueError, match=r"LIV 3, entry 2 \(featurizer group\)"):
        G.validate(raw)
    g, n = G.repair(raw, rng_of(0))
    assert n == 1 and g.livs[2][1] == 3
    assert [p.featurizer_owner for p in G.plans(g)] == [0, 1, 2]


def test_legal_links_are_kept():
    g = Genome(((1, 1, 1, 1, 1), (9, 2, 1, 2, 1), (1, 1, 2, 1, 4), (9, 4, 1, 4, 1), (10, 5, 1, 5, 1),
                (10, 5, 2, 5, 3)))
    assert G.repair(g, rng_of(0)) == (g, 0)
    ps = G.plans(g)
    # An SA fed C, B and V computes nothing: it uses no featurizer, so its featurizer link is moot (D12).
    assert (ps[2].featurizer_owner, ps[2].share_owner, ps[2].shared_groups) == (2, 0, frozenset("CBV"))
    assert (ps[5].featurizer_owner, ps[5].share_owner, ps[5].shared_groups) == (4, 4, frozenset("CB"))
    # Non-owners with strategy 1 share nothing, whatever their group id.
    g2 = Genome(((1, 1, 1, 1, 1), (1, 1, 1, 1, 1)))
    assert [(p.featurizer_owner, p.share_owner) for p in G.plans(g2)] == [(0, 0), (1, 1)]
    # Feature-group sharing across classes with the same share_key (SA-1 and SA-2) is legal.
    g3 = Genome(((1, 1, 1, 1, 1), (2, 2, 1, 1, 2)))
    assert G.plans(g3)[1].share_owner == 0


@pytest.mark.parametrize("cid", sorted(liv.REGISTRY))
def test_every_class(cid):
    """Each class alone, with itself, and next to GMemless: legal values, links and repair."""
    memless = liv.REGISTRY[cid].share_key is None
    assert G.legal_fg_strategies(cid) == ((1,) if memless else (1, 2, 3, 4))
    assert memless == (cid == 9)  # D6
    assert G.plans(Genome(((cid, 1, 1, 1, 1),))) == [liv.LayerPlan(cid, 0, 0)]
    # Featurizer sharing with itself is always legal (D9).
    g = Genome(((cid, 1, 1, 1, 1), (cid, 1, 2, 2, 1)))
    assert G.plans(g)[1].featurizer_owner == 0
    for s in (2, 3, 4):
        g = Genome(((cid, 1, 1, 1, 1), (cid, 2, 1, 1, s)))
        if memless:
            with pytest.raises(ValueError, match=r"LIV 2, entry 5 \(feature-group strategy\).*allowed 1"):
                G.validate(g)
            fixed, n = G.repair(g, rng_of(s))
            assert n == 1 and fixed.livs[1][4] == 1
        else:
            p = G.plans(g)[1]
            assert (p.share_owner, p.shared_groups) == (0, liv.SHARED_GROUPS[s])
            # No class shares feature groups with GMemless, in either direction.
            for a, b in ((cid, 9), (9, cid)):
                bad = Genome(((a, 1, 1, 1, 1), (b, 2, 1, 1, s if b != 9 else 1)))
                if b != 9:
                    with pytest.raises(ValueError, match="LIV 2, entry 4"):
                        G.validate(bad)
                    assert G.plans(G.repair(bad, rng_of(0))[0])[1].share_owner == 1
    assert "\n" in describe.describe(Genome(((cid, 1, 1, 1, 1), (cid, 1, 2, 1, 1 if memless else 4))))


def test_out_of_range_group_is_resampled_then_checked():
    raw = Genome(((1, 1, 1, 1, 1), (5, 7, 2, 0, 4)))  # groups 7 and 0 out of 1..2
    g, n = G.repair(raw, rng_of(3))
    G.validate(g)
    assert n == n_diff(raw, g) >= 2
    assert g.livs[1][0] == 5 and g.livs[1][2] == 2 and g.livs[1][4] == 4  # legal values untouched
    assert G.plans(g)[1].featurizer_owner == 1 and G.plans(g)[1].share_owner == 1  # no link to SA-1


# ----------------------------------------------------------------------------------------------------
# Text form and errors (D13)
# ----------------------------------------------------------------------------------------------------


@given(valid_genomes())
def test_text_roundtrip(g):
    assert Genome.parse(str(g)) == g
    assert hash(Genome.parse(str(g))) == hash(g)
    assert Genome.from_flat(g.flat()) == g and len(g.flat()) == 5 * g.depth
    if all(v <= 9 for v in g.flat()):
        assert Genome.parse(g.compact()) == g
    else:
        with pytest.raises(ValueError, match="one digit"):
            g.compact()


def test_text_examples():
    g = Genome.parse("1.1.1.1.1-9.2.1.2.1")
    assert g.livs == ((1, 1, 1, 1, 1), (9, 2, 1, 2, 1)) and g.depth == 2
    assert str(g) == "1.1.1.1.1-9.2.1.2.1" and g.compact() == "11111-92121"
    # The paper's compact example reads fine, but under our option pool it asks SA-3 (GQA) for SA-2's
    # B,V, whose head layout differs (D10): legal text, illegal link.
    assert Genome.parse("21211-31112", check=False) == Genome(((2, 1, 2, 1, 1), (3, 1, 1, 1, 2)))
    with pytest.raises(ValueError, match="LIV 2, entry 4"):
        Genome.parse("21211-31112")
    assert Genome.parse(" 11111 - 92121 ") == g
    assert Genome.parse("17.1.1.1.1") == Genome(((17, 1, 1, 1, 1),))
    assert Genome.parse("1.1.1.1.1-9.9.1.1.1", check=False).livs[1][1] == 9  # unchecked parse keeps values


@pytest.mark.parametrize("text, needles", [
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("1.1.1.1", ["LIV 1", "5 entries"]),
    ("1.1.1.1.1-9.2.1.2", ["LIV 2", "5 entries"]),
    ("1.1.1.1.1--9.2.1.2.1", ["LIV 2", "5 entries"]),
    ("1.1.x.1.1", ["LIV 1", "entry 3 (featurizer strategy)", "positive integer"]),
    ("1.1.1.1.", ["LIV 1", "entry 5 (feature-group strategy)", "positive integer"]),
    ("1.1.1.-1.1", ["LIV 1", "5 entries"]),
    ("1211", ["LIV 1", "5 digits"]),
    ("11111-1211a", ["LIV 2", "entry 5 (feature-group strategy)", "positive integer"]),
    ("11111-12111x", ["LIV 2", "5 digits"]),
    ("11111-1a111", ["LIV 2", "entry 2 (featurizer group)", "positive integer"]),
    ("18.1.1.1.1", ["LIV 1", "entry 1 (class)", "allowed 1..17"]),
    ("0.1.1.1.1", ["LIV 1", "entry 1 (class)", "allowed 1..17"]),
    ("1.1.1.1.1-1.3.1.2.1", ["LIV 2", "entry 2 (featurizer group)", "allowed 1, 2"]),
    ("1.1.1.1.1-1.2.3.2.1", ["LIV 2", "entry 3 (featurizer strategy)", "allowed 1, 2"]),
    ("1.1.1.1.1-1.2.1.0.1", ["LIV 2", "entry 4 (feature-group group)", "allowed 1, 2"]),
    ("1.1.1.1.5", ["LIV 1", "entry 5 (feature-group strategy)", "allowed 1..4"]),
    ("1.1.1.1.1-9.2.1.1.2", ["LIV 2", "entry 5 (feature-group strategy)", "allowed 1", "GMemless"]),
    ("1.1.1.1.1-5.1.2.2.1", ["LIV 2", "entry 2 (featurizer group)", "LIV 1 (SA-1)", "Rec-1", "D9"]),
    ("1.1.1.1.1-5.2.1.1.3", ["LIV 2", "entry 4 (feature-group group)", "LIV 1 (SA-1)", "Rec-1", "D10"]),
    ("9.1.1.1.1-9.2.1.1.1-5.3.1.1.2", ["LIV 3", "entry 4 (feature-group group)", "GMemless"]),
    ("3.1.1.1.1-4.2.1.1.4", ["LIV 2", "entry 4"]),  # different GQA layouts
    ("5.1.1.1.1-6.2.1.1.2", ["LIV 2", "entry 4"]),  # different state sizes
    ("1.1.1.1.1-10.2.1.1.2", ["LIV 2", "entry 4"]),  # differential vs not
])
def test_bad_strings_name_liv_and_entry(text, needles):
    with pytest.raises(ValueError) as e:
        Genome.parse(text)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_bad_shapes():
    with pytest.raises(ValueError, match="at least one LIV"):
        Genome(())
    with pytest.raises(ValueError, match="LIV 2: .*5 entries"):
        Genome(((1, 1, 1, 1, 1), (1, 1, 1, 1)))
    with pytest.raises(ValueError, match="5·depth"):
        Genome.from_flat([1, 1, 1])
    with pytest.raises(TypeError):
        Genome(((1.5, 1, 1, 1, 1),))
    with pytest.raises(ValueError, match="depth"):
        G.random_genome(0, rng_of(0))
    with pytest.raises(ValueError, match="equal depths"):
        G.crossover(G.transformer_pp(2), G.transformer_pp(4), rng_of(0))


# ----------------------------------------------------------------------------------------------------
# Canonical form (D12)
# ----------------------------------------------------------------------------------------------------


def relabel(g: Genome, perm_f: list[int], perm_s: list[int]) -> Genome:
    """Apply permutations of the ids 1..depth to the featurizer and feature-group group entries."""
    return Genome(tuple((c, perm_f[f - 1], fs, perm_s[s - 1], ss) for c, f, fs, s, ss in g.livs))


@given(valid_genomes(), st.randoms(use_true_random=False))
def test_canonical_idempotent_and_relabel_invariant(g, rand):
    c = G.canonical(g)
    G.validate(c)
    assert G.canonical(c) == c
    assert G.plans(c) == G.plans(g)
    assert G.canonical_str(g) == str(c)
    ids = list(range(1, g.depth + 1))
    pf, ps = ids[:], ids[:]
    rand.shuffle(pf)
    rand.shuffle(ps)
    h = relabel(g, pf, ps)
    assert G.plans(h) == G.plans(g)  # relabelling changes no architecture
    assert G.canonical(h) == c
    # D12: ids in order of first use; singleton groups have strategy 1.
    for e in (1, 3):
        seen = []
        for row in c.livs:
            if row[e] not in seen:
                assert row[e] == len(seen) + 1
                seen.append(row[e])
        for row in c.livs:
            if sum(r[e] == row[e] for r in c.livs) == 1:
                assert row[e + 1] == 1


@given(valid_genomes(), st.randoms(use_true_random=False))
def test_plan_preserving_edits_keep_canonical(g, rand):
    """Edits that change the genome but not the architecture: owners' strategies are irrelevant, and a
    strategy-1 non-owner may sit in any group whose owner comes before it, or in a fresh one."""
    rows = [list(r) for r in g.livs]
    for e in (1, 3):
        own = G._owners([r[e] for r in rows])
        for i, r in enumerate(rows):
            if own[i] == i:
                r[e + 1] = rand.choice(G.legal_values(e + 1, r[0], g.depth))  # an owner's strategy does not matter
        own = G._owners([r[e] for r in rows])
        for i, r in enumerate(rows):
            if own[i] != i and r[e + 1] == 1:
                earlier = {rows[j][e] for j in range(i)}  # joining these keeps every owner in place
                r[e] = rand.choice(sorted(earlier))
    h = Genome(tuple(tuple(r) for r in rows))
    G.validate(h)
    assert G.plans(h) == G.plans(g)
    assert G.canonical(h) == G.canonical(g)


@given(valid_genomes(depth=st.integers(1, 3), classes=[1, 2, 9]),
       valid_genomes(depth=st.integers(1, 3), classes=[1, 2, 9]))
def test_canonical_equal_iff_same_plans(a, b):
    """Small depth, few classes: collisions are frequent, so both directions get exercised."""
    assert (G.canonical(a) == G.canonical(b)) == (G.plans(a) == G.plans(b))


def test_canonical_examples():
    g = Genome.parse("1.3.1.2.1-9.1.2.3.1-1.3.2.2.2-9.2.1.1.1")
    assert str(G.canonical(g)) == "1.1.1.1.1-9.2.1.2.1-1.1.2.1.2-9.3.1.3.1"
    # A singleton with strategy != 1 is written as 1; an owner's strategy as 1.
    assert str(G.canonical(Genome.parse("1.1.2.1.4-1.2.2.2.3"))) == "1.1.1.1.1-1.2.1.2.1"


# ----------------------------------------------------------------------------------------------------
# Variation (D18)
# ----------------------------------------------------------------------------------------------------


@given(DEPTHS, SEEDS)
def test_mutate_and_crossover_mechanics(depth, seed):
    rng = rng_of(seed)
    a, b = G.random_genome(depth, rng), G.random_genome(depth, rng)
    assert G.mutate(a, rng, p=0.0) == a
    m = G.mutate(a, rng, p=1.0)
    for i, row in enumerate(m.livs):
        for e, v in enumerate(row):
            lo, hi = G.entry_range(e, depth)
            assert lo <= v <= hi, (i, e, v)
    assert G.crossover(a, a, rng) == a
    for k in (1, 2, 3):
        child, fa, fb = G.crossover(a, b, rng, k=k).flat(), a.flat(), b.flat()
        assert child[0] == fa[0]  # the child starts with a's segment
        src = [0 if x == y else (1 if x == fb[j] else 2) for j, (x, y) in enumerate(zip(child, fa))]
        assert 2 not in src  # every integer comes from a parent
        # At most k switches between parents (positions where a and b agree can hide some).
        from_b = [j for j, s in enumerate(src) if s == 1 and fa[j] != fb[j]]
        from_a = [j for j, (x, y) in enumerate(zip(fa, fb)) if x != y and j not in from_b]
        order = sorted([(j, 1) for j in from_b] + [(j, 0) for j in from_a])
        switches = sum(order[t][1] != order[t - 1][1] for t in range(1, len(order)))
        assert switches <= k


def test_mutation_samples_full_ranges():
    rng = rng_of(0)
    g = G.transformer_pp(4)
    seen = [set() for _ in range(5)]
    for _ in range(300):
        for row in G.mutate(g, rng, p=1.0).livs:
            for e, v in enumerate(row):
                seen[e].add(v)
    assert [sorted(s) for s in seen] == [list(range(1, 18)), [1, 2, 3, 4], [1, 2], [1, 2, 3, 4], [1, 2, 3, 4]]


def test_random_genome_is_seeded():
    assert G.random_genome(12, rng_of(5)) == G.random_genome(12, rng_of(5))
    assert G.random_genome(12, rng_of(5)) != G.random_genome(12, rng_of(6))


def test_repair_rate_is_measured():
    """D18's target: over 1000 mutations (p = 0.1) and 1000 two-point crossovers of random depth-24
    parents, at most 20% of offspring need any repair. Mutation is legal by construction (0%);
    crossover cut between LIVs that no link spans is measured at 14.4% for this seed."""
    rng = rng_of(2025)
    pool = [G.random_genome(24, rng) for _ in range(64)]
    pick = lambda: pool[rng.integers(len(pool))]  # noqa: E731
    mut_n = [G.repair(G.mutate(pick(), rng, p=0.1), rng)[1] for _ in range(1000)]
    cross_n = [G.repair(G.crossover(pick(), pick(), rng, k=2), rng)[1] for _ in range(1000)]
    mut, cross = np.mean(np.array(mut_n) > 0), np.mean(np.array(cross_n) > 0)
    print(f"\nrepair rate at depth 24: offspring needing repair: mutation {mut:.1%}, crossover {cross:.1%}")
    assert mut == 0
    assert 0 < cross <= 0.2


@given(valid_genomes(), SEEDS, st.sampled_from([0.1, 0.5, 1.0]))
def test_mutation_is_legal_by_construction(g, seed, p):
    """D18: from any valid genome (not only sampled ones), mutation returns a valid genome that repair
    leaves alone, and every entry it touched took a legal value."""
    m = G.mutate(g, rng_of(seed), p=p)
    assert G.is_valid(m)
    assert G.repair(m, rng_of(seed)) == (m, 0)


@given(DEPTHS, SEEDS)
def test_crossover_between_unlinked_livs_is_legal_as_spliced(depth, seed):
    """D18: cut="liv" cuts only where no link of either parent crosses; each LIV then arrives with the
    LIVs it shares with, so the child is legal without repair and keeps each parent's links."""
    rng = rng_of(seed)
    a, b = G.random_genome(depth, rng, share_rate=0.3), G.random_genome(depth, rng, share_rate=0.3)
    free = set(range(1, depth)) - G._spans(a) - G._spans(b)
    child = G.crossover(a, b, rng, k=2, cut="liv")
    if free:
        assert G.repair(child, rng) == (child, 0)
        pa, pb, pc = G.plans(a), G.plans(b), G.plans(child)
        for i, p in enumerate(pc):
            assert p in (pa[i], pb[i])  # each LIV as built in one of its parents, links included
    assert G.anchored(G.anchored(a)) == G.anchored(a) and G.plans(G.anchored(a)) == G.plans(a)


def test_random_genome_share_rate():
    """The knob: 0 shares nothing; 1 puts every LIV after the first into an earlier featurizer group;
    the default gives sharing at both levels in a sizeable share of depth-6 genomes."""
    rng = rng_of(7)
    for _ in range(50):
        g = G.random_genome(6, rng, share_rate=0.0)
        assert all(p.featurizer_owner == i and p.share_owner == i for i, p in enumerate(G.plans(g)))
        g = G.random_genome(6, rng, share_rate=1.0)
        assert all(row[G.FEAT_STRATEGY] == 2 for row in g.livs[1:])
    gs = [G.plans(G.random_genome(6, rng)) for _ in range(400)]
    feat = np.mean([any(p.featurizer_owner != i for i, p in enumerate(ps)) for ps in gs])
    fg = np.mean([any(p.share_owner != i for i, p in enumerate(ps)) for ps in gs])
    assert 0.3 < feat < 0.55 and 0.3 < fg < 0.55  # 41% and 42% over 2000 draws at SHARE_RATE 0.1
    with pytest.raises(ValueError, match="share_rate"):
        G.random_genome(6, rng, share_rate=1.5)


# ----------------------------------------------------------------------------------------------------
# Canonical form == architecture (D12): same canonical string <=> same parameters and same function
# ----------------------------------------------------------------------------------------------------


def built(g: Genome):
    """(unique parameter count, each LIV's output for a fixed input) of g's model built with seed 0.
    Per-LIV outputs, not logits: at initialisation an LIV adds ~1e-4 to the residual stream, and a
    difference below float32's resolution there would vanish from the logits."""
    cfg = liv.ModelConfig(vocab_size=32, d_model=32, head_dim=8, depth=g.depth, max_len=16)  # SA-3 != SA-4 heads
    model = G.build_model(g, cfg, seed=0)
    assert all(p.numel() > 0 for p in model.parameters()), "a module has a zero-size parameter"
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o[0])) for m in model.livs]
    with torch.no_grad():
        model(torch.arange(12).remainder(32).view(1, 12))
    for h in hooks:
        h.remove()
    return G.count_params(g, cfg)["total"], outs


def same_architecture(a: Genome, b: Genome) -> bool:
    (na, ya), (nb, yb) = built(a), built(b)
    return na == nb and len(ya) == len(yb) and all(torch.equal(u, v) for u, v in zip(ya, yb))


@given(valid_genomes(depth=st.integers(1, 3), linked=True), SEEDS,
       st.integers(0, 14), st.integers(1, 17))
def test_equal_canonical_iff_equal_architecture(g, seed, pos, value):
    """Neighbours (one entry changed, then repaired) often build the same model: the canonical strings
    are equal exactly when the parameters and the logits for the same seed are."""
    flat = g.flat()
    flat[pos % len(flat)] = value if pos % 5 == 0 else 1 + value % g.depth if pos % 5 in (1, 3) else 1 + value % 4
    h = G.repair(Genome.from_flat(flat), rng_of(seed))[0]
    assert (G.canonical(g) == G.canonical(h)) == same_architecture(g, h)


def test_fed_attention_examples():
    """An SA fed C, B and V (strategy 4) computes nothing: its featurizer strategy, its featurizer
    group and SA-1 vs SA-2 change nothing that is built, so they canonicalise alike."""
    texts = ["1.1.1.1.1-1.1.2.1.4-9.3.1.3.1", "1.1.1.1.1-1.2.1.1.4-9.3.1.3.1", "1.1.1.1.1-2.2.1.1.4-9.3.1.3.1",
             "2.1.1.1.1-2.1.2.1.4-9.3.1.3.1"]
    gs = [Genome.parse(t) for t in texts]
    assert {G.canonical_str(g) for g in gs[:3]} == {"1.1.1.1.1-1.2.1.1.4-9.3.1.2.1"}
    assert all(same_architecture(gs[0], g) for g in gs[1:3])
    assert G.canonical_str(gs[3]) == "2.1.1.1.1-1.2.1.1.4-9.3.1.2.1"  # the owner stays SA-2
    assert not same_architecture(gs[0], gs[3])
    # A featurizer group whose owner is fed keeps its weights for the first member that computes.
    g = Genome.parse("1.1.1.1.1-1.2.1.1.4-1.2.2.3.1")
    assert [p.featurizer_owner for p in G.plans(g)] == [0, 1, 2]
    assert G.canonical_str(g) == "1.1.1.1.1-1.2.1.1.4-1.3.1.2.1"


# ----------------------------------------------------------------------------------------------------
# Baselines (D15), tables, pictures, command line
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 6, 12])
def test_transformer_pp(n):
    g = G.transformer_pp(2 * n)
    assert [r[0] for r in g.livs] == [1, 9] * n
    assert G.canonical(g) == g
    assert all(p.featurizer_owner == i and p.share_owner == i and not p.shared_groups
               for i, p in enumerate(G.plans(g)))


def test_striped_mamba():
    g = G.striped_mamba(24)
    classes = [r[0] for r in g.livs]
    assert classes[1::2] == [9] * 12
    assert [j for j, c in enumerate(classes[0::2]) if c == 1] == [3, 9]  # one SA-1 per six mixers
    assert set(classes[0::2]) == {1, 5}
    assert G.canonical(g) == g
    assert all(not p.shared_groups and p.featurizer_owner == i for i, p in enumerate(G.plans(g)))
    assert [r[0] for r in G.striped_mamba(2).livs] == [1, 9]  # one mixer: it is the attention
    assert [r[0] for r in G.striped_mamba(6).livs] == [5, 9, 5, 9, 1, 9]  # fewer than four: the last
    assert [r[0] for r in G.striped_mamba(8).livs][0::2] == [5, 5, 5, 1]
    assert set(G.BASELINES) == {"transformer++", "striped-mamba"}
    for bad in (0, 3, 25):
        for f in G.BASELINES.values():
            with pytest.raises(ValueError, match="even depth"):
                f(bad)


def test_tables_and_picture():
    t = describe.explain_classes()
    for c in liv.REGISTRY.values():
        assert c.name in t and c.operator in t
    g = Genome.parse("1.1.1.1.1-9.2.1.2.1-1.1.2.1.2-9.4.1.4.1-1.5.1.1.4-5.6.1.6.1-5.6.2.6.3")
    pic = describe.describe(g)
    lines = pic.splitlines()
    assert len(lines) == 2 + g.depth
    assert "weights of 1" in lines[4] and "B,V from 1" in lines[4]
    assert "C,B,V from 1" in lines[6] and "weights of 6" in lines[8] and "C,B from 6" in lines[8]
    assert "GMemless" in lines[3] and "Rec-1" in lines[8]
    assert "│" in lines[5]  # the feature-group link passes LIV 4 on its way to LIV 5


def test_cli_in_process(capsys):
    assert describe.genome_main(["--random", "6", "--seed", "1", "--no-params"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("genome ") and len(out.splitlines()) == 2 + 6
    assert describe.genome_main(["--baseline", "striped-mamba", "--depth", "8", "--no-params"]) == 0
    assert "Rec-1" in capsys.readouterr().out
    assert describe.genome_main(["--classes"]) == 0
    assert "GConv-2-Diff" in capsys.readouterr().out
    assert describe.genome_main(["1.1.1.1.1-9.2.1.2.2", "--no-params"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LIV 2, entry 5" in err


@pytest.mark.parametrize("args", [["--baseline", "transformer++"], ["--random", "x"], [], ["1.1.1.1.1", "--depth", "2"],
                                  ["--baseline", "gpt"], ["1.1.1.1.1", "--d-model", "30"]])
def test_cli_bad_arguments_exit_2_with_one_line(args, capsys):
    try:
        rc = describe.genome_main(args)
    except SystemExit as e:  # argparse's own errors go through _Parser.error
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("genome.py: error:") and err.count("\n") == 1, err


def test_cli_bad_genome_exits_2_without_traceback():
    here = Path(__file__).resolve().parent.parent  # the repository
    r = subprocess.run([sys.executable, str(here / "genome.py"), "1.1.1.1.1-5.1.2.2.1"], capture_output=True,
                       text=True, cwd=here, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("genome.py: error: LIV 2, entry 2 (featurizer group)")


# ----------------------------------------------------------------------------------------------------
# Decoding into a model (liv.Backbone)
# ----------------------------------------------------------------------------------------------------


def small_cfg(depth: int) -> liv.ModelConfig:
    return liv.ModelConfig(vocab_size=32, d_model=32, head_dim=16, depth=depth, max_len=64)


def unique_params(model: torch.nn.Module) -> int:
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def test_build_model_checks_depth():
    with pytest.raises(ValueError, match="depth"):
        G.build_model(G.transformer_pp(4), small_cfg(2))
    with pytest.raises(ValueError, match="depth"):
        G.count_params(G.transformer_pp(4), small_cfg(2))


@given(valid_genomes(), SEEDS, st.booleans())
def test_decoded_model_trains_and_is_causal(g, seed, mutated):
    if mutated:
        g = G.repair(G.mutate(g, rng_of(seed), p=0.3), rng_of(seed))[0]
    cfg = small_cfg(g.depth)
    model = G.build_model(g, cfg, seed=0)
    gen = torch.Generator().manual_seed(seed % 2**31)
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=gen)
    logits = model(idx)
    assert logits.shape == (2, 12, cfg.vocab_size)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), idx[:, 1:].reshape(-1))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    # Causality: changing tokens after t leaves the logits up to t unchanged. Exactly, except through
    # an FFT long convolution (GConv-2, 8 and 17), whose round-off mixes all positions at ~1e-7.
    t = int(torch.randint(0, 11, (), generator=gen))
    idx2 = idx.clone()
    idx2[:, t + 1:] = torch.randint(0, cfg.vocab_size, (2, 11 - t), generator=gen)
    with torch.no_grad():
        a, b = model(idx)[:, :t + 1], model(idx2)[:, :t + 1]
    if any(r[0] in (8, 17) for r in g.livs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    else:
        assert torch.equal(a, b)
    # The analytic count (meta device) equals the built model's unique parameters.
    assert G.count_params(g, cfg)["total"] == unique_params(model)


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    g = Genome.parse("1.1.1.1.1-9.2.1.2.1-5.3.1.3.1-9.4.1.4.1")
    cfg = small_cfg(4)
    state = torch.get_rng_state()
    m1, m2, m3 = G.build_model(g, cfg, seed=1), G.build_model(g, cfg, seed=1), G.build_model(g, cfg, seed=2)
    assert torch.equal(state, torch.get_rng_state())
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("d_model, head_dim", [(32, 16), (64, 16), (128, 64)])
def test_transformer_pp_has_llama_parameter_count(n, d_model, head_dim):
    cfg = liv.ModelConfig(vocab_size=50, d_model=d_model, head_dim=head_dim, depth=2 * n, max_len=64)
    d, ffn = cfg.d_model, cfg.ffn_hidden
    llama = cfg.vocab_size * d + n * (4 * d * d + 3 * d * ffn + 2 * d) + d
    counts = G.count_params(G.transformer_pp(2 * n), cfg)
    assert counts == dict(total=llama, non_embedding=llama - cfg.vocab_size * d)
    assert unique_params(G.build_model(G.transformer_pp(2 * n), cfg)) == llama


@pytest.mark.parametrize("cid", sorted(liv.REGISTRY))
def test_featurizer_sharing_shares_parameter_tensors(cid):
    """D9: LIV 3 uses LIV 1's featurizer module itself (the same parameter tensors), counted once."""
    cfg = small_cfg(3)
    own = Genome(((cid, 1, 1, 1, 1), (9, 2, 1, 2, 1), (cid, 1, 1, 3, 1)))  # same group, strategy 1
    shared = Genome(((cid, 1, 1, 1, 1), (9, 2, 1, 2, 1), (cid, 1, 2, 3, 1)))  # strategy 2
    m_own, m_shared = G.build_model(own, cfg), G.build_model(shared, cfg)
    f_own = [m_own.livs[i].feat() for i in (0, 2)]
    f_shared = [m_shared.livs[i].feat() for i in (0, 2)]
    assert f_own[0] is not f_own[1]
    assert f_shared[0] is f_shared[1]
    own_params = {id(p) for p in f_shared[0].parameters()}
    assert own_params and own_params == {id(p) for p in f_shared[1].parameters()}
    saved = sum(p.numel() for p in f_own[1].parameters())
    n_own, n_shared = G.count_params(own, cfg)["total"], G.count_params(shared, cfg)["total"]
    assert n_own - n_shared == saved > 0
    assert n_shared == unique_params(m_shared)


def owner_featurizer_grad(g: Genome, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradient of a loss on the logits w.r.t. LIV 1's featurizer projection, per feature group, with
    LIV 1's own residual output multiplied by zero: what is left can only come from later LIVs that
    reuse its computed feature groups."""
    cfg = small_cfg(g.depth)
    model = G.build_model(g, cfg, seed=seed)
    hook = model.livs[0].register_forward_hook(lambda m, inp, out: (out[0] * 0, out[1]))
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    logits = model(idx)
    F.cross_entropy(logits.reshape(-1, cfg.vocab_size), idx.roll(-1, 1).reshape(-1)).backward()
    hook.remove()
    feat = model.livs[0].feat()
    grad = feat.proj.weight.grad
    grad = torch.zeros_like(feat.proj.weight) if grad is None else grad
    rows = grad.split([w for _, w in feat.layout])  # the projection is [C | B | V | extras]
    return {name: r for (name, _), r in zip(feat.layout, rows)}


@pytest.mark.parametrize("cid", [c for c in sorted(liv.REGISTRY) if c != 9])
def test_feature_group_sharing_reuses_activations(cid):
    """D10: with LIV 1's own output cut, gradient still reaches exactly the rows of its featurizer that
    compute the groups LIV 2 reuses (B,V / C,B / C,B,V); without the link, none at all."""
    alone = owner_featurizer_grad(Genome(((cid, 1, 1, 1, 1), (cid, 2, 1, 2, 4))))
    assert all(r.abs().sum() == 0 for r in alone.values())
    for strategy in (2, 3, 4):
        g = Genome(((cid, 1, 1, 1, 1), (cid, 2, 1, 1, strategy)))
        assert G.plans(g)[1].share_owner == 0
        grads = owner_featurizer_grad(g)
        received = liv.SHARED_GROUPS[strategy]
        for name, r in grads.items():
            assert (r.abs().sum() > 0) == (name in received), (strategy, name)


# ----------------------------------------------------------------------------------------------------
# The cache (D7): analytic == measured, and decoding random genomes reproduces the parallel forward
# ----------------------------------------------------------------------------------------------------


def cache_cfg(depth: int) -> liv.ModelConfig:
    return liv.ModelConfig(vocab_size=32, d_model=64, head_dim=16, depth=depth, max_len=64, chunk_size=8)


@given(valid_genomes(linked=True), st.sampled_from([1, 7, 48]))
def test_measured_cache_equals_analytic(g, T):
    """Including genomes with shared K/V and shared convolution streams (linked draws)."""
    cfg = cache_cfg(g.depth)
    with torch.device("meta"):
        model = G.build_model(g, cfg)
    assert liv.measure_cache_bytes(model, T) == G.cache_bytes(g, cfg, seq_len=T)
    # and the bytes scale with the element size: float32 doubles them
    assert liv.measure_cache_bytes(model, T, dtype=torch.float32) == G.cache_bytes(g, cfg, seq_len=T, bytes_per_element=4)


def test_cache_examples():
    cfg = liv.ModelConfig(d_model=2048, depth=48, max_len=4096)
    assert G.cache_bytes(G.transformer_pp(48), cfg) == 805_306_368  # the paper's 1B Transformer++ (D7)
    cfg = cache_cfg(2)
    H, P, d, T = 4, 16, 64, 100
    one = lambda text: G.cache_bytes(Genome.parse(text), cfg, seq_len=T, bytes_per_element=1)
    assert one("1.1.1.1.1-9.2.1.2.1") == 2 * T * H * P  # SA-1: keys and values
    assert one("1.1.1.1.1-1.2.1.1.2") == 2 * T * H * P  # the second SA-1 reads the first one's KV cache
    assert one("1.1.1.1.1-1.2.1.1.3") == 3 * T * H * P  # shares keys only: keeps its own values
    assert one("5.1.1.1.1-9.2.1.2.1") == H * P * 16 + (d + 2 * 16) * 3  # Rec-1: state + conv tails
    assert one("7.1.1.1.1-8.2.1.1.2") == T * d + (3 - 1) * d  # GC2 reads GC1's stream whole; keeps C's tail only
    assert one("10.1.1.1.1-9.2.1.2.1") == 3 * T * H * P  # SA-1-Diff: 2 key sets, 1 value set (D5)


@given(valid_genomes(depth=st.integers(1, 6), linked=True), SEEDS)
def test_decoding_random_genomes_reproduces_forward(g, seed):
    """Prefill a prefix with the parallel path, then step one token at a time: the logits equal the
    parallel forward's (teacher forcing) to 1e-5 relative in float32."""
    cfg = cache_cfg(g.depth)
    model = G.build_model(g, cfg, seed=seed % 1000).eval()
    idx = torch.randint(0, 32, (1, 13), generator=torch.Generator().manual_seed(seed % 1000))
    with torch.no_grad():
        ref = model(idx)
        cache = model.new_cache(1, 13)
        got = torch.cat([model(idx[:, :5], cache)] + [model(idx[:, t:t + 1], cache) for t in range(5, 13)], 1)
        assert cache.nbytes() == G.cache_bytes(g, cfg, seq_len=13, bytes_per_element=4)  # the cache it really used
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


# ----------------------------------------------------------------------------------------------------
# Shaping the search space (D25) and scaling a backbone (D26)
# ----------------------------------------------------------------------------------------------------

CFG_SMALL = dict(vocab_size=64, d_model=32, head_dim=16)


@given(valid_genomes(depth=st.integers(1, 4), linked=True), st.integers(1, 3))
def test_repeated_genome_has_exactly_the_expected_counts(g, times):
    """Independent copies: every LIV of a copy counted anew, the final norm and the embedding once, and
    `times` x the cache; as built (parameters of the real model) and by formula."""
    cfg = liv.ModelConfig(depth=g.depth, **CFG_SMALL)
    r = space.repeat(g, times)
    big = liv.ModelConfig(depth=times * g.depth, **CFG_SMALL)
    one, many = G.count_params(g, cfg), G.count_params(r, big)
    emb, final_norm = cfg.vocab_size * cfg.d_model, cfg.d_model
    assert r.depth == times * g.depth and G.canonical(r) == r
    assert many["total"] == times * (one["non_embedding"] - final_norm) + final_norm + emb
    assert many["non_embedding"] == times * (one["non_embedding"] - final_norm) + final_norm
    assert G.cache_bytes(r, big) == times * G.cache_bytes(g, cfg)
    model = G.build_model(r, big)
    assert sum(p.numel() for p in model.parameters()) == many["total"]
    assert liv.measure_cache_bytes(model, 4096) == times * G.cache_bytes(g, cfg)
    shared = space.repeat(g, times, share_across=True)  # featurizers tied across copies, feature groups not
    assert G.count_params(shared, big)["total"] <= many["total"]
    assert G.cache_bytes(shared, big) == times * G.cache_bytes(g, cfg)
    assert space.repeat(g, 1) == G.canonical(g) == space.repeat(g, 1, share_across=True)


def test_repeat_example_from_the_issue():
    """The depth-6 winner doubled at width 64: its text written twice shares across the copies (218,760
    parameters); repeat() makes two independent blocks (2 x 124,012 less one final norm of 64, plus the
    embedding: 264,344)."""
    g = Genome.parse("15.3.1.1.1-15.2.1.1.3-9.1.2.3.1-15.4.2.1.4-16.5.1.5.1-16.6.1.6.3")
    cfg = liv.ModelConfig(vocab_size=256, d_model=64, head_dim=16, depth=12)
    assert G.count_params(Genome.parse(f"{g}-{g}"), cfg)["total"] == 218_760
    assert G.count_params(space.repeat(g, 2), cfg)["total"] == 264_344 == 2 * (124_012 - 64) + 64 + 256 * 64
    assert G.count_params(space.repeat(g, 2, share_across=True), cfg)["total"] < 218_760
    with pytest.raises(ValueError, match="times"):
        space.repeat(g, 0)


def test_parse_classes_ids_ranges_and_names():
    assert space.parse_classes("5,7-9, gconv-2 ,SA-1") == (1, 5, 7, 8, 9)
    for bad in ("", "0", "18", "9-5", "Attention"):
        with pytest.raises(ValueError):
            space.parse_classes(bad)


@given(DEPTHS, SEEDS, st.lists(st.integers(1, liv.n_classes()), min_size=1, max_size=4))
def test_a_class_set_bounds_sampling_mutation_and_repair(depth, seed, classes):
    rng = rng_of(seed)
    a = G.random_genome(depth, rng, share_rate=0.5, classes=classes)
    b = G.random_genome(depth, rng, share_rate=0.5, classes=classes)
    assert space.uses_only(a, classes) and space.uses_only(b, classes)
    m = G.mutate(a, rng, p=1.0, classes=classes)
    assert G.is_valid(m) and space.uses_only(m, classes)
    child, _ = G.repair(G.mutate(G.crossover(a, b, rng), rng, classes=classes), rng, classes=classes)
    assert G.is_valid(child) and space.uses_only(child, classes)
    wild = Genome(tuple((c, 1, 1, 1, 1) for c in range(1, depth + 1)))
    assert space.uses_only(G.repair(wild, rng, classes=classes)[0], classes)


def test_no_class_set_draws_exactly_as_before():
    """classes=None and all 17 classes draw the same genomes: the default search is unchanged."""
    every = range(1, liv.n_classes() + 1)
    for seed in range(20):
        a, b = rng_of(seed), rng_of(seed)
        ga, gb = G.random_genome(8, a), G.random_genome(8, b, classes=every)
        assert ga == gb and G.mutate(ga, a, p=0.3) == G.mutate(gb, b, p=0.3, classes=every)


def test_cli_repeat_prints_the_scaled_counts(capsys):
    assert describe.genome_main(["15.3.1.1.1-15.2.1.1.3-9.1.2.3.1-15.4.2.1.4-16.5.1.5.1-16.6.1.6.3", "--repeat", "2",
                   "--d-model", "64", "--head-dim", "16"]) == 0
    out = capsys.readouterr().out
    assert "repeated 2 times" in out and "parameters: 264,344" in out and "cache: 6,752 bytes" in out
