"""Which arm owns which buckets: per-arm sorted bucket ranges, their O(1) lookup table, and
re-weighting that moves the fewest buckets."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.hashing import NUM_BUCKETS

WEIGHT_TOLERANCE = 1e-6
"""How far (in percentage points) the weights may sum from 100."""

Range = tuple[int, int]
"""A half-open bucket range [start, end)."""

_SHAPE = 'an allocation looks like {"arms": [name, ...], "ranges": {name: [[start, end], ...]}}'


class AllocationError(ValueError):
    """Weights or ranges that do not describe a valid split of the buckets."""


def _check_arm_names(arms: Sequence[object]) -> None:
    if not arms:
        raise AllocationError("an allocation needs at least one arm")
    for arm in arms:
        if not isinstance(arm, str) or not arm:
            raise AllocationError(f"arm names must be non-empty strings, got {arm!r}")
    if len(set(arms)) != len(arms):
        repeated = sorted({str(a) for a in arms if arms.count(a) > 1})
        raise AllocationError(f"arm names must be unique, repeated: {repeated}")


def weights_to_counts(weights: Mapping[str, float]) -> dict[str, int]:
    """Percent weights (each >= 0, summing to 100 within WEIGHT_TOLERANCE) → whole buckets
    summing to exactly NUM_BUCKETS, by largest remainder; equal remainders go to the earlier
    arm. An arm of weight 0 gets 0 buckets."""
    order = list(weights)
    _check_arm_names(order)
    for arm, w in weights.items():
        # bool is an int, but True as a weight is a bug upstream, not 1%.
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise AllocationError(f"weight of arm {arm!r} must be a finite number, got {w!r}")
        if w < 0:
            raise AllocationError(f"weight of arm {arm!r} must be >= 0, got {w!r}")
    total = math.fsum(float(w) for w in weights.values())
    if abs(total - 100.0) > WEIGHT_TOLERANCE:
        raise AllocationError(f"weights must sum to 100%, they sum to {total:.9g}%")
    # Rounding to 1e-9 first cancels floating-point noise (0.57% → 56.99999999999999 buckets,
    # 0.285% → 28.499999999999996), so equal remainders really tie and go to the earlier arm.
    exact = {arm: round(float(w) * NUM_BUCKETS / 100.0, 9) for arm, w in weights.items()}
    counts = {arm: math.floor(x) for arm, x in exact.items()}
    # 0 <= missing <= number of arms with a remainder > 0, so a weight-0 arm never gets one.
    missing = NUM_BUCKETS - sum(counts.values())
    position = {arm: i for i, arm in enumerate(order)}
    by_remainder = sorted(order, key=lambda a: (counts[a] - exact[a], position[a]))
    for arm in by_remainder[:missing]:
        counts[arm] += 1
    return counts


def _check_range(arm: str, r: object) -> Range:
    if not isinstance(r, Sequence) or isinstance(r, str) or len(r) != 2:
        raise AllocationError(f"range {r!r} of arm {arm!r} must be a [start, end] pair")
    start, end = r
    for x in (start, end):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise AllocationError(f"range {list(r)!r} of arm {arm!r} must hold integers")
    start, end = int(start), int(end)
    if not 0 <= start < end <= NUM_BUCKETS:
        raise AllocationError(
            f"range [{start}, {end}) of arm {arm!r} must be non-empty and inside [0, {NUM_BUCKETS})"
        )
    return start, end


def _canonical_ranges(
    arms: tuple[str, ...], ranges: Mapping[str, Sequence[Sequence[int]]]
) -> dict[str, tuple[Range, ...]]:
    """Every arm (in arm order) → its ranges as int tuples; an arm missing from ``ranges`` owns
    none. Checks each arm's ranges on their own: well-formed, sorted, merged."""
    if not isinstance(ranges, Mapping):
        raise AllocationError(_SHAPE)
    unknown = [a for a in ranges if a not in arms]
    if unknown:
        raise AllocationError(f"ranges name arms that are not in arms {list(arms)}: {unknown}")
    out: dict[str, tuple[Range, ...]] = {}
    for arm in arms:
        own = ranges.get(arm, ())
        if not isinstance(own, Sequence) or isinstance(own, str):
            raise AllocationError(f"ranges of arm {arm!r} must be a list of [start, end] pairs")
        checked = tuple(_check_range(arm, r) for r in own)
        for (_, prev_end), (start, end) in itertools.pairwise(checked):
            if start <= prev_end:
                raise AllocationError(
                    f"ranges of arm {arm!r} must be sorted, non-overlapping and merged: "
                    f"[{start}, {end}) follows a range ending at {prev_end}"
                )
        out[arm] = checked
    return out


def _owner_table(arms: tuple[str, ...], ranges: Mapping[str, tuple[Range, ...]]) -> tuple[int, ...]:
    """bucket → arm index, after checking the (canonical) ranges cover every bucket once."""
    spans = sorted((s, e, i) for i, arm in enumerate(arms) for s, e in ranges[arm])
    owner = [0] * NUM_BUCKETS
    covered = 0  # every bucket below this one has exactly one owner
    for start, end, index in spans:
        if start < covered:
            other = arms[owner[start]]
            raise AllocationError(
                f"bucket {start} is owned by two arms: {other!r} and {arms[index]!r}"
            )
        if start > covered:
            raise AllocationError(f"buckets [{covered}, {start}) are owned by no arm")
        owner[start:end] = [index] * (end - start)
        covered = end
    if covered != NUM_BUCKETS:
        raise AllocationError(f"buckets [{covered}, {NUM_BUCKETS}) are owned by no arm")
    return tuple(owner)


def _ranges_from_owner(owner: Sequence[int], n_arms: int) -> list[list[Range]]:
    ranges: list[list[Range]] = [[] for _ in range(n_arms)]
    start = 0
    for b in range(1, NUM_BUCKETS + 1):
        if b == NUM_BUCKETS or owner[b] != owner[start]:
            ranges[owner[start]].append((start, b))
            start = b
    return ranges


@dataclass(frozen=True)
class Allocation:
    """Arms (order matters: table() holds indexes into it) and the half-open bucket ranges each
    owns: sorted, merged, together covering 0..NUM_BUCKETS-1 exactly once. An arm of weight 0
    owns no ranges but is still an arm. Construction validates (AllocationError) and copies
    ``ranges`` into canonical form: every arm present, int tuples."""

    arms: tuple[str, ...]
    ranges: Mapping[str, tuple[Range, ...]]
    # Built once here so the hot path is one tuple index; excluded from ==, repr and hash.
    _table: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arms = tuple(self.arms)
        _check_arm_names(arms)
        ranges = _canonical_ranges(arms, self.ranges)
        # frozen: the generated __setattr__ refuses, so set the normalised fields directly.
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "_table", _owner_table(arms, ranges))

    def __hash__(self) -> int:
        # The generated hash would hash the ranges dict and fail; this keeps Allocation usable
        # as a cache key.
        return hash((self.arms, tuple(self.ranges[a] for a in self.arms)))

    def validate(self) -> None:
        """Raise AllocationError unless arms are unique non-empty names and the ranges are
        sorted, merged, within [0, NUM_BUCKETS), name only known arms and cover every bucket
        exactly once. Construction (and so from_dict) runs the same checks."""
        arms = tuple(self.arms)
        _check_arm_names(arms)
        _owner_table(arms, _canonical_ranges(arms, self.ranges))

    @classmethod
    def _from_owner(cls, arms: Sequence[str], owner: Sequence[int]) -> Allocation:
        per_arm = _ranges_from_owner(owner, len(arms))
        return cls(tuple(arms), {arm: tuple(per_arm[i]) for i, arm in enumerate(arms)})

    @classmethod
    def initial(cls, weights: Mapping[str, float]) -> Allocation:
        """Contiguous ranges in arm order: arm 0 gets [0, c0), arm 1 [c0, c0 + c1), ...,
        with counts c from weights_to_counts."""
        counts = weights_to_counts(weights)
        ranges: dict[str, tuple[Range, ...]] = {}
        start = 0
        for arm in weights:
            end = start + counts[arm]
            ranges[arm] = ((start, end),) if end > start else ()
            start = end
        return cls(tuple(weights), ranges)

    def reweight(self, weights: Mapping[str, float]) -> Allocation:
        """The allocation for ``weights`` (arm order taken from it) that moves exactly
        Σ|Δcount|/2 buckets from this one, the minimum.

        Arms that shrink, and arms absent from ``weights`` (removed), release their
        highest-numbered buckets; arms that grow, and new arms, take the lowest released buckets,
        in arm order. A bucket only ever moves from a shrinking arm to a growing one, so a
        growing canary never sends a treated user back to control.
        """
        targets = weights_to_counts(weights)
        new_arms = tuple(weights)
        new_index = {arm: i for i, arm in enumerate(new_arms)}
        members: dict[str, list[int]] = {arm: [] for arm in self.arms}
        for b, i in enumerate(self._table):
            members[self.arms[i]].append(b)  # ascending, as b is
        owner = [-1] * NUM_BUCKETS
        released: list[int] = []
        for arm, buckets in members.items():
            keep = min(len(buckets), targets.get(arm, 0))
            for b in buckets[:keep]:
                owner[b] = new_index[arm]
            released.extend(buckets[keep:])
        released.sort()
        taken = 0
        for arm in new_arms:
            need = targets[arm] - min(len(members.get(arm, ())), targets[arm])
            for b in released[taken : taken + need]:
                owner[b] = new_index[arm]
            taken += need
        return Allocation._from_owner(new_arms, owner)

    def table(self) -> tuple[int, ...]:
        """bucket → index into ``arms`` (length NUM_BUCKETS), built once, for O(1) routing."""
        return self._table

    def arm_for(self, bucket: int) -> str:
        """The arm that owns ``bucket`` (0..NUM_BUCKETS-1)."""
        if not 0 <= bucket < NUM_BUCKETS:
            raise IndexError(f"bucket {bucket} is outside 0..{NUM_BUCKETS - 1}")
        return self.arms[self._table[bucket]]

    def counts(self) -> dict[str, int]:
        """Arm → number of buckets it owns (0 for a weight-0 arm)."""
        return {arm: sum(e - s for s, e in self.ranges[arm]) for arm in self.arms}

    def weights(self) -> dict[str, float]:
        """Arm → percent of buckets it owns (counts / 100)."""
        return {arm: 100.0 * c / NUM_BUCKETS for arm, c in self.counts().items()}

    def moved(self, other: Allocation) -> int:
        """How many buckets belong to a differently named arm in ``other``."""
        mine, theirs = self.arms, other.arms
        return sum(mine[a] != theirs[b] for a, b in zip(self._table, other._table, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: {"arms": [...], "ranges": {arm: [[start, end], ...]}}, every arm
        present in ranges (an empty list for a weight-0 arm)."""
        return {
            "arms": list(self.arms),
            "ranges": {arm: [[s, e] for s, e in self.ranges[arm]] for arm in self.arms},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        """Inverse of to_dict; raises AllocationError naming the problem unless ``data`` is
        a valid allocation (see validate)."""
        if not isinstance(data, Mapping) or "arms" not in data or "ranges" not in data:
            raise AllocationError(_SHAPE)
        arms = data["arms"]
        if not isinstance(arms, Sequence) or isinstance(arms, str):
            raise AllocationError(f"arms must be a list of names; {_SHAPE}")
        return cls(tuple(arms), data["ranges"])
