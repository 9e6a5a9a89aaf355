"""Bucket-range allocations: exact coverage and minimal-movement re-weighting (property tests)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.allocation import Allocation, AllocationError, weights_to_counts
from gateway.hashing import NUM_BUCKETS, buckets_v1


@st.composite
def weight_vectors(draw: st.DrawFn, min_arms: int = 2, max_arms: int = 6) -> dict[str, float]:
    n = draw(st.integers(min_arms, max_arms))
    parts = draw(
        st.lists(st.integers(0, 1000), min_size=n, max_size=n).filter(lambda p: sum(p) > 0)
    )
    total = sum(parts)
    weights = [100.0 * p / total for p in parts]
    weights[-1] = 100.0 - sum(weights[:-1])
    names = draw(st.permutations([f"arm{i}" for i in range(n)]))
    return {name: max(w, 0.0) for name, w in zip(names, weights, strict=True)}


def delta(a: Allocation, weights: dict[str, float]) -> int:
    before = a.counts()
    after = weights_to_counts(weights)
    arms = set(before) | set(after)
    return sum(abs(after.get(x, 0) - before.get(x, 0)) for x in arms) // 2


@settings(max_examples=150, deadline=None)
@given(weight_vectors())
def test_counts_and_coverage(weights: dict[str, float]) -> None:
    counts = weights_to_counts(weights)
    assert sum(counts.values()) == NUM_BUCKETS
    for arm, w in weights.items():
        assert abs(counts[arm] - w * 100) < 1.0 + 1e-6
    alloc = Allocation.initial(weights)
    assert alloc.counts() == counts
    assert len(alloc.table()) == NUM_BUCKETS
    assert Allocation.from_dict(alloc.to_dict()) == alloc


@settings(max_examples=150, deadline=None)
@given(weight_vectors(), weight_vectors())
def test_reweight_moves_exactly_the_minimum(w1: dict[str, float], w2: dict[str, float]) -> None:
    a = Allocation.initial(w1)
    b = a.reweight(w2)
    assert b.counts() == weights_to_counts(w2)
    assert a.moved(b) == delta(a, w2)
    assert a.reweight(w1).moved(a) == 0


@settings(max_examples=60, deadline=None)
@given(weight_vectors(3, 5), st.lists(weight_vectors(3, 5), min_size=1, max_size=4))
def test_chains_of_reweights_stay_minimal(
    first: dict[str, float], chain: list[dict[str, float]]
) -> None:
    current = Allocation.initial(first)
    for weights in chain:
        nxt = current.reweight(weights)
        assert current.moved(nxt) == delta(current, weights)
        current = nxt


def test_canary_ramp_never_moves_a_treated_user_back() -> None:
    alloc = Allocation.initial({"control": 99, "canary": 1})
    treated = {b for b in range(NUM_BUCKETS) if alloc.arm_for(b) == "canary"}
    for pct in (5, 10, 25, 50, 100):
        alloc = alloc.reweight({"control": 100 - pct, "canary": pct})
        now = {b for b in range(NUM_BUCKETS) if alloc.arm_for(b) == "canary"}
        assert treated <= now
        assert len(now) == pct * 100
        treated = now


def test_arms_can_be_added_and_removed() -> None:
    a = Allocation.initial({"a": 50, "b": 50})
    b = a.reweight({"a": 50, "c": 50})
    assert b.arms == ("a", "c")
    assert a.moved(b) == 5000
    assert all(b.arm_for(x) == "a" for x in range(NUM_BUCKETS) if a.arm_for(x) == "a")


@pytest.mark.parametrize(
    "weights, message",
    [
        ({}, "at least one arm"),
        ({"a": 50, "b": 40}, "sum to 90"),
        ({"a": 110, "b": -10}, ">= 0"),
        ({"a": math.nan, "b": 100}, "finite"),
        ({"a": math.inf, "b": 0}, "finite"),
    ],
)
def test_bad_weights(weights: dict[str, float], message: str) -> None:
    with pytest.raises(AllocationError, match=message):
        Allocation.initial(weights)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"arms": ["a", "b"], "ranges": {"a": [[0, 5000]], "b": [[4000, 10000]]}}, "two arms"),
        ({"arms": ["a", "b"], "ranges": {"a": [[0, 5000]], "b": [[5001, 10000]]}}, "no arm"),
        ({"arms": ["a"], "ranges": {"a": [[0, 10001]]}}, "outside"),
        ({"arms": ["a", "a"], "ranges": {"a": [[0, 10000]]}}, "unique"),
        ({"arms": ["a"], "ranges": {"a": [[0, 10000]], "z": []}}, "unknown arms"),
        ({"arms": ["a"], "ranges": {"a": [[5000, 10000], [0, 5000]]}}, "sorted"),
        ({"arms": ["a"]}, "must look like"),
    ],
)
def test_bad_ranges(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(AllocationError, match=message):
        Allocation.from_dict(data)


@pytest.mark.parametrize(
    "weights", [{"a": 50, "b": 50}, {"a": 10, "b": 90}, {"a": 34, "b": 33, "c": 33}]
)
def test_shares_over_20000_users_within_one_point(weights: dict[str, float]) -> None:
    alloc = Allocation.initial(weights)
    buckets = buckets_v1("shares", [f"user-{i}" for i in range(20_000)])
    table = alloc.table()
    for index, arm in enumerate(alloc.arms):
        share = 100 * sum(1 for b in buckets if table[b] == index) / len(buckets)
        assert abs(share - weights[arm]) <= 1.0
