"""Tests for evolve.py: NSGA-II against brute force, hypervolume against independent oracles; the loop
with its log book is test_runlog.py's."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from evolve import crowding_distance, dominates, non_dominated_sort, rank_and_crowding, select_survivors, tournament
from workshop.evaluation import default_ref_point, hypervolume

# ----------------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------------


def brute_fronts(F):
    """Fronts by the definition: repeatedly take the points no remaining point dominates (O(n^3))."""
    F = np.asarray(F, dtype=float)
    finite = [i for i in range(len(F)) if np.isfinite(F[i]).all()]
    dom = lambda a, b: all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
    left, fronts = set(finite), []
    while left:
        front = sorted(i for i in left if not any(dom(F[j], F[i]) for j in left))
        fronts.append(front)
        left -= set(front)
    bad = [i for i in range(len(F)) if i not in set(finite)]
    return fronts + ([bad] if bad else [])


def hv_inclusion_exclusion(F, ref):
    """Exact hypervolume of a few points in any dimension: the union of boxes by inclusion-exclusion."""
    F = [p for p in np.asarray(F, dtype=float) if np.isfinite(p).all() and (p < ref).all()]
    total = 0.0
    for k in range(1, len(F) + 1):
        for subset in itertools.combinations(F, k):
            corner = np.max(subset, axis=0)  # the boxes' intersection starts at the worst corner
            total += (-1) ** (k + 1) * np.prod(np.asarray(ref) - corner)
    return total


def hv_monte_carlo(F, ref, n=200_000, seed=0):
    F = np.asarray(F, dtype=float)
    lo = F.min(axis=0)
    rng = np.random.default_rng(seed)
    U = lo + rng.random((n, len(ref))) * (np.asarray(ref) - lo)
    covered = (F[None, :, :] <= U[:, None, :]).all(-1).any(-1)
    box = np.prod(np.asarray(ref) - lo)
    p = covered.mean()
    return box * p, box * math.sqrt(p * (1 - p) / n)  # estimate, standard error


# points with many ties and duplicates: small integers; optionally a constant objective
def point_sets(min_m=2, max_m=3, max_n=24, non_finite=False):
    @st.composite
    def build(draw):
        m = draw(st.integers(min_m, max_m))
        n = draw(st.integers(0, max_n))
        F = np.array(draw(st.lists(st.lists(st.integers(0, 4), min_size=m, max_size=m),
                                   min_size=n, max_size=n)), dtype=float).reshape(n, m)
        if n and draw(st.booleans()):
            F[:, draw(st.integers(0, m - 1))] = 2.0  # a constant objective
        if n and non_finite:
            rows = draw(st.lists(st.integers(0, n - 1), max_size=3))
            for r in rows:
                F[r, draw(st.integers(0, m - 1))] = draw(st.sampled_from([np.inf, np.nan, -np.inf]))
        return F
    return build()


# ----------------------------------------------------------------------------------------------------
# Non-dominated sort, crowding, survival, tournament
# ----------------------------------------------------------------------------------------------------


@given(point_sets(non_finite=True))
def test_fronts_equal_the_definition(F):
    fronts = non_dominated_sort(F)
    assert [f.tolist() for f in fronts] == brute_fronts(F)
    assert sorted(np.concatenate(fronts).tolist() if fronts else []) == list(range(len(F)))


def test_fronts_by_hand_and_non_finite_last():
    F = np.array([[1, 2], [2, 1], [2, 2], [1, 2], [np.nan, 0], [0, np.inf], [3, 3]])
    assert [f.tolist() for f in non_dominated_sort(F)] == [[0, 1, 3], [2], [6], [4, 5]]
    assert non_dominated_sort(np.zeros((0, 2))) == []
    D = dominates(np.array([[0, 0], [0, 1], [0, 0]]))
    assert D.tolist() == [[False, True, False], [False, False, False], [False, True, False]]


def test_crowding_by_hand():
    F = np.array([[0, 3], [1, 2], [2, 1], [3, 0]], dtype=float)
    assert np.allclose(crowding_distance(F), [np.inf, 4 / 3, 4 / 3, np.inf])
    assert np.isinf(crowding_distance(F[:2])).all()  # a front of two: both are extremes
    # non-finite rows get 0 and do not change the others
    G = np.vstack([F, [[np.nan, 1.0], [np.inf, 0.0]]])
    assert np.allclose(crowding_distance(G), [np.inf, 4 / 3, 4 / 3, np.inf, 0, 0])


@given(point_sets(min_m=1, max_m=3))
def test_crowding_extremes_infinite_and_constant_objective_adds_zero(F):
    d = crowding_distance(F)
    assert d.shape == (len(F),) and (d >= 0).all()
    for j in range(F.shape[1]):
        v = F[:, j]
        if len(v) and v.max() > v.min():
            assert np.isinf(d[(v == v.min()) | (v == v.max())]).all()
    with_constant = np.hstack([F, np.full((len(F), 1), 7.0)])
    assert np.array_equal(crowding_distance(with_constant), d)
    if len(F) and all(F[:, j].max() == F[:, j].min() for j in range(F.shape[1])):
        assert (d == 0).all()  # every objective constant: nobody is an extreme


@given(point_sets(non_finite=True), st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_survival_keeps_whole_fronts_first(F, n, seed):
    keep = select_survivors(F, n, np.random.default_rng(seed))
    assert len(keep) == min(n, len(F)) and len(set(keep.tolist())) == len(keep)
    kept = set(keep.tolist())
    fronts = non_dominated_sort(F)
    partial = [f for f in fronts if 0 < len(kept & set(f.tolist())) < len(f)]
    assert len(partial) <= 1  # at most one front is cut ...
    for k, f in enumerate(fronts):  # ... and it is the last one touched; earlier ones are whole
        if kept & set(f.tolist()):
            assert all(set(g.tolist()) <= kept for g in fronts[:k])
    if partial:  # the cut front keeps its most isolated members
        f = partial[0]
        crowd = dict(zip(f.tolist(), crowding_distance(F[f])))
        inside = [crowd[i] for i in f.tolist() if i in kept]
        outside = [crowd[i] for i in f.tolist() if i not in kept]
        assert min(inside) >= max(outside)
    # same seed, same survivors
    assert np.array_equal(keep, select_survivors(F, n, np.random.default_rng(seed)))


def test_survival_tie_breaks_are_seeded_and_random():
    F = np.ones((10, 2))  # one front of equal points: crowding all 0, the choice is the coin's
    picks = {tuple(select_survivors(F, 3, np.random.default_rng(s))) for s in range(20)}
    assert len(picks) > 1
    assert all(tuple(select_survivors(F, 3, np.random.default_rng(s))) ==
               tuple(select_survivors(F, 3, np.random.default_rng(s))) for s in range(5))


def test_tournament_rules():
    rng = np.random.default_rng(0)
    assert (tournament([0, 1], [0.0, 5.0], rng, 200) == 0).all()           # lower rank wins
    assert (tournament([1, 1], [np.inf, 2.0], rng, 200) == 0).all()        # then larger crowding
    w = tournament([0, 0], [1.0, 1.0], rng, 400)                           # then a coin flip
    assert 100 < (w == 0).sum() < 300
    assert (tournament([3], [0.0], rng, 5) == 0).all()                     # a population of one
    ranks, crowd = rank_and_crowding(np.array([[0, 1], [1, 0], [1, 1], [np.inf, 0]]))
    assert ranks.tolist() == [0, 0, 1, 2] and np.isinf(crowd[:2]).all()
    assert crowd[2] == 0 and crowd[3] == 0  # a front of one point has constant objectives: 0


# ----------------------------------------------------------------------------------------------------
# Hypervolume
# ----------------------------------------------------------------------------------------------------


def test_hypervolume_by_hand():
    # staircase (1,3), (2,2), (3,1) under ref (4,4): strips of 3 + 2 + 1
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == 6.0
    assert hypervolume([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2]], [4, 4]) == 6.0  # dominated, duplicate
    assert hypervolume([[1, 3], [5, 0], [np.nan, 0], [0, np.inf], [4, 0]], [4, 4]) == 3.0  # ignored
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0
    assert hypervolume([[2.0], [0.5]], [3.0]) == 2.5                          # 1-D: a length
    assert hypervolume([[1, 1, 1]], [2, 3, 4]) == 6.0                         # 3-D: one box
    assert hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2]) == 4 + 2 - 1         # two boxes, overlap 1


@given(point_sets(max_n=7, non_finite=True))
def test_hypervolume_equals_inclusion_exclusion(F):
    ref = np.full(F.shape[1], 4.5)
    assert hypervolume(F, ref) == pytest.approx(hv_inclusion_exclusion(F, ref), abs=1e-9)


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_against_monte_carlo(m):
    rng = np.random.default_rng(m)
    F = rng.random((12, m))
    F = F / np.linalg.norm(F, axis=1, keepdims=True)  # points on a sphere: a curved front
    ref = np.full(m, 1.1)
    estimate, se = hv_monte_carlo(F, ref)
    assert abs(hypervolume(F, ref) - estimate) < 5 * se


@given(point_sets(max_n=12), st.lists(st.integers(0, 4), min_size=3, max_size=3))
def test_hypervolume_never_decreases_when_a_point_is_added(F, p):
    ref = np.full(F.shape[1], 5.0)
    p = np.array(p[: F.shape[1]], dtype=float)[None, :]
    before, after = hypervolume(F, ref), hypervolume(np.vstack([F, p]), ref)
    assert after >= before - 1e-12
    if len(F) and not dominates(np.vstack([F, p]))[: len(F), -1].any():  # non-dominated: it adds
        assert after > before or (F == p).all(axis=1).any() or (p >= ref).any()


def test_default_ref_point():
    F = np.array([[1.0, 10.0, 5.0], [3.0, 20.0, 5.0], [np.inf, 0.0, 0.0]])
    assert default_ref_point(F) == pytest.approx((3.2, 21.0, 5.5))
    assert default_ref_point(np.zeros((1, 2))) == (1.0, 1.0)
    with pytest.raises(ValueError):
        default_ref_point(np.full((2, 2), np.inf))
