"""Bucket-range allocations: exact coverage, minimal-movement re-weighting, validation."""

from __future__ import annotations

import itertools
import json
import math
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.allocation import Allocation, AllocationError, weights_to_counts
from gateway.hashing import NUM_BUCKETS, buckets_v1

ARM_NAMES = [f"arm{i}" for i in range(8)]


@st.composite
def hundredths(draw: st.DrawFn, min_arms: int, max_arms: int) -> dict[str, float]:
    """Weights with at most two decimals (how people write them), summing to 100 exactly in
    hundredths; whole percentages are drawn often."""
    n = draw(st.integers(min_arms, max_arms))
    step = draw(st.sampled_from([100, 1]))  # whole percent, or hundredths of a percent
    cuts = sorted(draw(st.lists(st.integers(0, 10_000 // step), min_size=n - 1, max_size=n - 1)))
    points = [0, *(c * step for c in cuts), 10_000]
    parts = [b - a for a, b in itertools.pairwise(points)]
    names = draw(st.permutations(ARM_NAMES[:max_arms]))[:n]
    return {name: p / 100 for name, p in zip(names, parts, strict=True)}


@st.composite
def fractions(draw: st.DrawFn, min_arms: int, max_arms: int) -> dict[str, float]:
    """Arbitrary float weights (e.g. 100/3) summing to 100 up to rounding."""
    n = draw(st.integers(min_arms, max_arms))
    raw = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n).filter(lambda p: sum(p)))
    weights = [100.0 * p / sum(raw) for p in raw]
    weights[-1] = max(0.0, 100.0 - math.fsum(weights[:-1]))
    names = draw(st.permutations(ARM_NAMES[:max_arms]))[:n]
    return dict(zip(names, weights, strict=True))


def weight_vectors(min_arms: int = 2, max_arms: int = 6) -> st.SearchStrategy[dict[str, float]]:
    return st.one_of(hundredths(min_arms, max_arms), fractions(min_arms, max_arms))


def minimum_moves(before: dict[str, int], after: dict[str, int]) -> int:
    """Σ|Δcount|/2 over the union of arms (a removed arm goes to 0, a new one starts at 0)."""
    arms = set(before) | set(after)
    total = sum(abs(after.get(a, 0) - before.get(a, 0)) for a in arms)
    assert total % 2 == 0
    return total // 2


def owned(alloc: Allocation) -> dict[str, set[int]]:
    return {arm: {b for s, e in alloc.ranges[arm] for b in range(s, e)} for arm in alloc.arms}


def assert_well_formed(alloc: Allocation) -> None:
    """Checks the invariants independently of Allocation's own validation."""
    spans = sorted((s, e) for arm in alloc.arms for s, e in alloc.ranges[arm])
    assert spans and spans[0][0] == 0 and spans[-1][1] == NUM_BUCKETS
    assert all(e1 == s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
    for arm in alloc.arms:
        own = alloc.ranges[arm]
        assert all(s < e for s, e in own)
        assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(own))  # merged
    table = alloc.table()
    assert len(table) == NUM_BUCKETS
    for index, arm in enumerate(alloc.arms):
        for s, e in alloc.ranges[arm]:
            assert set(table[s:e]) == {index}


# -- properties ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(weight_vectors())
def test_counts_sum_exactly_and_coverage_is_exact(weights: dict[str, float]) -> None:
    counts = weights_to_counts(weights)
    assert list(counts) == list(weights)
    assert sum(counts.values()) == NUM_BUCKETS
    for arm, w in weights.items():
        assert abs(counts[arm] - w * 100) < 1.0
        if w == 0:
            assert counts[arm] == 0
    alloc = Allocation.initial(weights)
    assert alloc.arms == tuple(weights)
    assert alloc.counts() == counts
    assert_well_formed(alloc)
    alloc.validate()


@settings(max_examples=100, deadline=None)
@given(hundredths(2, 6))
def test_weights_in_hundredths_get_exactly_their_buckets(weights: dict[str, float]) -> None:
    assert weights_to_counts(weights) == {a: round(w * 100) for a, w in weights.items()}
    assert Allocation.initial(weights).weights() == pytest.approx(weights, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(weight_vectors(), weight_vectors())
def test_reweight_moves_exactly_the_minimum(w1: dict[str, float], w2: dict[str, float]) -> None:
    a = Allocation.initial(w1)
    b = a.reweight(w2)
    assert_well_formed(b)
    assert b.arms == tuple(w2)
    assert b.counts() == weights_to_counts(w2)
    assert a.moved(b) == b.moved(a) == minimum_moves(a.counts(), b.counts())
    # Only shrinking arms lose buckets and only growing arms gain them.
    before, after = owned(a), owned(b)
    for arm in set(a.arms) | set(b.arms):
        old, new = before.get(arm, set()), after.get(arm, set())
        assert old <= new or new <= old


@settings(max_examples=60, deadline=None)
@given(weight_vectors(2, 5), st.lists(weight_vectors(2, 5), min_size=1, max_size=4))
def test_chains_of_reweights_stay_minimal(
    first: dict[str, float], chain: list[dict[str, float]]
) -> None:
    current = Allocation.initial(first)
    for weights in chain:
        nxt = current.reweight(weights)
        assert current.moved(nxt) == minimum_moves(current.counts(), nxt.counts())
        assert nxt.reweight(weights) == nxt  # idempotent
        current = nxt


@settings(max_examples=60, deadline=None)
@given(weight_vectors(), weight_vectors())
def test_reweight_to_the_same_weights_moves_nothing(
    w1: dict[str, float], w2: dict[str, float]
) -> None:
    a = Allocation.initial(w1).reweight(w2)  # fragmented ranges, not just the initial layout
    assert a.reweight(a.weights()).moved(a) == 0
    assert a.reweight(w2) == a


@settings(max_examples=100, deadline=None)
@given(weight_vectors(1, 6), weight_vectors(1, 6))
def test_dict_round_trip(w1: dict[str, float], w2: dict[str, float]) -> None:
    alloc = Allocation.initial(w1).reweight(w2)
    again = Allocation.from_dict(json.loads(json.dumps(alloc.to_dict())))
    assert again == alloc
    assert again.table() == alloc.table()
    assert hash(again) == hash(alloc)


# -- examples -----------------------------------------------------------------------------


def test_initial_is_contiguous_in_arm_order() -> None:
    alloc = Allocation.initial({"b": 25, "a": 0, "c": 75})
    assert alloc.arms == ("b", "a", "c")
    assert alloc.to_dict() == {
        "arms": ["b", "a", "c"],
        "ranges": {"b": [[0, 2500]], "a": [], "c": [[2500, 10000]]},
    }
    assert alloc.counts() == {"b": 2500, "a": 0, "c": 7500}
    assert alloc.weights() == {"b": 25.0, "a": 0.0, "c": 75.0}
    assert [alloc.arm_for(b) for b in (0, 2499, 2500, 9999)] == ["b", "b", "c", "c"]
    assert alloc.table()[2499:2501] == (0, 2)


def test_reweight_releases_highest_and_takes_lowest_in_arm_order() -> None:
    a = Allocation.initial({"x": 50, "y": 50})
    b = a.reweight({"x": 30, "y": 70})  # x releases its top 2000 buckets
    assert b.to_dict()["ranges"] == {"x": [[0, 3000]], "y": [[3000, 10000]]}
    c = b.reweight({"x": 50, "y": 50})  # y releases its top 2000, x takes them
    assert c.to_dict()["ranges"] == {"x": [[0, 3000], [8000, 10000]], "y": [[3000, 8000]]}
    # Two growing arms: the earlier arm (in the new order) takes the lowest released buckets.
    d = Allocation.initial({"p": 40, "q": 30, "r": 30}).reweight({"r": 35, "q": 35, "p": 30})
    assert d.to_dict()["ranges"] == {
        "r": [[3000, 3500], [7000, 10000]],
        "q": [[3500, 7000]],
        "p": [[0, 3000]],
    }


def test_largest_remainder_breaks_ties_by_arm_order() -> None:
    assert weights_to_counts({"a": 100 / 3, "b": 100 / 3, "c": 100 / 3}) == {
        "a": 3334,
        "b": 3333,
        "c": 3333,
    }
    assert weights_to_counts({"c": 100 / 3, "b": 100 / 3, "a": 100 / 3}) == {
        "c": 3334,
        "b": 3333,
        "a": 3333,
    }
    assert weights_to_counts({"a": 0.005, "b": 0.005, "c": 99.99}) == {"a": 1, "b": 0, "c": 9999}
    # Both remainders are .5 (28.5, 3.5), but floating point gives .49999999999999645 and
    # .5000000000000004: the tie must still go to the earlier arm.
    assert weights_to_counts({"a": 0.285, "b": 0.035, "c": 99.68}) == {"a": 29, "b": 3, "c": 9968}
    assert weights_to_counts({"a": 33.33, "b": 33.33, "c": 33.34}) == {
        "a": 3333,
        "b": 3333,
        "c": 3334,
    }


def test_weights_may_be_numpy_numbers() -> None:
    weights: dict[str, Any] = {"a": np.int64(40), "b": np.float32(60)}
    assert weights_to_counts(weights) == {"a": 4000, "b": 6000}


def test_canary_ramp_never_moves_a_treated_user_back() -> None:
    alloc = Allocation.initial({"control": 99, "treatment": 1})
    treated = owned(alloc)["treatment"]
    for pct in (5, 10, 25, 50, 100):
        nxt = alloc.reweight({"control": 100 - pct, "treatment": pct})
        now = owned(nxt)["treatment"]
        assert treated <= now
        assert len(now) == pct * 100
        assert alloc.moved(nxt) == len(now) - len(treated)
        alloc, treated = nxt, now
    assert alloc.arms == ("control", "treatment")
    assert alloc.ranges["control"] == ()
    assert alloc.counts() == {"control": 0, "treatment": NUM_BUCKETS}


def test_arms_can_be_added_and_removed() -> None:
    a = Allocation.initial({"a": 50, "b": 50})
    b = a.reweight({"a": 50, "c": 50})  # b removed (absent), c added
    assert b.arms == ("a", "c")
    assert a.moved(b) == 5000
    assert owned(b)["a"] == owned(a)["a"]
    assert owned(b)["c"] == owned(a)["b"]
    c = b.reweight({"a": 40, "c": 40, "d": 20})
    assert c.arms == ("a", "c", "d")
    assert b.moved(c) == 2000
    d = c.reweight({"a": 50, "c": 50, "d": 0})  # weight 0 keeps d as an arm with no buckets
    assert d.arms == ("a", "c", "d") and d.ranges["d"] == ()
    assert c.moved(d) == 2000


def test_allocation_is_immutable_hashable_and_picklable() -> None:
    alloc = Allocation.initial({"a": 50, "b": 50})
    with pytest.raises(AttributeError):
        alloc.arms = ("z",)  # type: ignore[misc]
    assert {alloc: 1}[Allocation.initial({"a": 50, "b": 50})] == 1
    again = pickle.loads(pickle.dumps(alloc))
    assert again == alloc and again.table() == alloc.table()
    assert Allocation.initial({"a": 50, "b": 50}) != Allocation.initial({"b": 50, "a": 50})


def test_constructor_copies_ranges_into_canonical_form() -> None:
    source: dict[str, Any] = {"a": [[0, 10000]]}
    alloc = Allocation(("a", "b"), source)
    source["a"].append([10000, 10001])  # the caller's object is not shared
    assert alloc.ranges == {"a": ((0, 10000),), "b": ()}
    alloc.validate()


def test_arm_for_rejects_buckets_outside_the_range() -> None:
    alloc = Allocation.initial({"a": 50, "b": 50})
    for bucket in (-1, NUM_BUCKETS):
        with pytest.raises(IndexError):
            alloc.arm_for(bucket)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, message",
    [
        ({}, "at least one arm"),
        ({"a": 50, "b": 40}, "sum to 90%"),
        ({"a": 60, "b": 60}, "sum to 120%"),
        ({"a": 110, "b": -10}, "arm 'b' must be >= 0"),
        ({"a": math.nan, "b": 100}, "arm 'a' must be a finite number"),
        ({"a": math.inf, "b": 0}, "arm 'a' must be a finite number"),
        ({"a": "50", "b": 50}, "arm 'a' must be a finite number"),
        ({"a": True, "b": 99}, "arm 'a' must be a finite number"),
        ({"": 100}, "non-empty strings"),
        ({1: 100}, "non-empty strings"),
    ],
)
def test_bad_weights(weights: dict[Any, Any], message: str) -> None:
    for build in (Allocation.initial, Allocation.initial({"z": 100}).reweight, weights_to_counts):
        with pytest.raises(AllocationError, match=message):
            build(weights)


def test_weights_within_tolerance_are_accepted() -> None:
    assert sum(weights_to_counts({"a": 50 + 4e-7, "b": 50}).values()) == NUM_BUCKETS
    with pytest.raises(AllocationError, match=r"sum to 100\.000002%"):
        weights_to_counts({"a": 50 + 2e-6, "b": 50})


def _ranges(**by_arm: list[list[Any]]) -> dict[str, list[list[Any]]]:
    return by_arm


@pytest.mark.parametrize(
    "data, message",
    [
        ({"arms": ["a", "b"], "ranges": _ranges(a=[[0, 5000]], b=[[4000, 10000]])}, "two arms"),
        ({"arms": ["a", "b"], "ranges": _ranges(a=[[0, 5000]], b=[[5001, 10000]])}, "no arm"),
        ({"arms": ["a", "b"], "ranges": _ranges(a=[[0, 5000]], b=[[5000, 9999]])}, "no arm"),
        ({"arms": ["a", "b"], "ranges": _ranges(a=[[1, 5000]], b=[[5000, 10000]])}, "no arm"),
        ({"arms": ["a"], "ranges": _ranges(a=[[0, 10001]])}, "inside"),
        ({"arms": ["a"], "ranges": _ranges(a=[[-1, 10000]])}, "inside"),
        ({"arms": ["a", "b"], "ranges": _ranges(a=[[0, 0], [0, 10000]], b=[])}, "non-empty"),
        ({"arms": ["a", "a"], "ranges": _ranges(a=[[0, 10000]])}, "unique, repeated: \\['a'\\]"),
        ({"arms": [], "ranges": {}}, "at least one arm"),
        ({"arms": "ab", "ranges": {}}, "arms must be a list"),
        ({"arms": ["a"], "ranges": _ranges(a=[[0, 10000]], z=[])}, "not in arms"),
        ({"arms": ["a"], "ranges": _ranges(a=[[5000, 10000], [0, 5000]])}, "sorted"),
        ({"arms": ["a"], "ranges": _ranges(a=[[0, 5000], [5000, 10000]])}, "merged"),
        ({"arms": ["a"], "ranges": _ranges(a=[[0, 5000.0], [5000, 10000]])}, "integers"),
        ({"arms": ["a"], "ranges": _ranges(a=[["0", 10000]])}, "integers"),
        ({"arms": ["a"], "ranges": _ranges(a=[[0, 5000, 10000]])}, "pair"),
        ({"arms": ["a"], "ranges": {"a": 7}}, "list of"),
        ({"arms": ["a"], "ranges": [[0, 10000]]}, "looks like"),
        ({"arms": ["a"]}, "looks like"),
    ],
)
def test_bad_ranges(data: dict[str, Any], message: str) -> None:
    with pytest.raises(AllocationError, match=message):
        Allocation.from_dict(data)


def test_from_dict_accepts_missing_ranges_for_a_weight_zero_arm() -> None:
    alloc = Allocation.from_dict({"arms": ["a", "b"], "ranges": {"a": [[0, 10000]]}})
    assert alloc.counts() == {"a": NUM_BUCKETS, "b": 0}


# -- with the hash ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [{"a": 50, "b": 50}, {"a": 10, "b": 90}, {"a": 34, "b": 33, "c": 33}, {"a": 1, "b": 99}],
)
def test_shares_over_20000_users_within_one_point(weights: dict[str, float]) -> None:
    alloc = Allocation.initial(weights)
    buckets = buckets_v1("shares", [f"user-{i}" for i in range(20_000)])
    per_arm = np.bincount(np.asarray(alloc.table())[buckets], minlength=len(alloc.arms))
    for index, arm in enumerate(alloc.arms):
        share = 100 * per_arm[index] / len(buckets)
        assert abs(share - weights[arm]) <= 1.0, (arm, share)


def test_validate_catches_a_tampered_allocation() -> None:
    alloc = Allocation.initial({"a": 50, "b": 50})
    object.__setattr__(alloc, "ranges", {"a": ((0, 5000),), "b": ((6000, 10000),)})
    with pytest.raises(AllocationError, match=r"buckets \[5000, 6000\) are owned by no arm"):
        alloc.validate()
