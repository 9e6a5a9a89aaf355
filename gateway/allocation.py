"""Which arm owns which buckets: sorted bucket ranges, and minimal-movement re-weighting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.hashing import NUM_BUCKETS

WEIGHT_TOLERANCE = 1e-6

Range = tuple[int, int]


class AllocationError(ValueError):
    """Weights or ranges that do not describe a valid split of the buckets."""


def weights_to_counts(weights: Mapping[str, float]) -> dict[str, int]:
    """Percent weights → whole buckets summing to exactly NUM_BUCKETS (largest remainder;
    ties go to the earlier arm)."""
    if not weights:
        raise AllocationError("an allocation needs at least one arm")
    for arm, w in weights.items():
        if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise AllocationError(f"weight of arm {arm!r} must be a finite number >= 0, got {w!r}")
    total = sum(weights.values())
    if abs(total - 100.0) > WEIGHT_TOLERANCE:
        raise AllocationError(f"weights sum to {total:g}%, not 100%")
    # Rounding to 1e-9 first keeps 33.33 * 100 from landing a hair under 3333.
    exact = {arm: round(w * NUM_BUCKETS / 100.0, 9) for arm, w in weights.items()}
    counts = {arm: math.floor(x) for arm, x in exact.items()}
    missing = NUM_BUCKETS - sum(counts.values())
    order = list(weights)
    by_remainder = sorted(order, key=lambda a: (-(exact[a] - counts[a]), order.index(a)))
    for arm in by_remainder[:missing]:
        counts[arm] += 1
    return counts


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
    """Arms (in order) and the sorted, merged, half-open bucket ranges each owns."""

    arms: tuple[str, ...]
    ranges: Mapping[str, tuple[Range, ...]]
    _table: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", self._validate())

    def _validate(self) -> tuple[int, ...]:
        if not self.arms:
            raise AllocationError("an allocation needs at least one arm")
        if len(set(self.arms)) != len(self.arms):
            raise AllocationError(f"arm names must be unique, got {list(self.arms)}")
        unknown = set(self.ranges) - set(self.arms)
        if unknown:
            raise AllocationError(f"ranges name unknown arms {sorted(unknown)}")
        owner = [-1] * NUM_BUCKETS
        for index, arm in enumerate(self.arms):
            previous_end = -1
            for start, end in self.ranges.get(arm, ()):
                if not (0 <= start < end <= NUM_BUCKETS):
                    raise AllocationError(
                        f"range [{start}, {end}) of arm {arm!r} is outside 0..{NUM_BUCKETS}"
                    )
                if start <= previous_end:
                    raise AllocationError(
                        f"ranges of arm {arm!r} must be sorted, merged and non-overlapping"
                    )
                previous_end = end
                for b in range(start, end):
                    if owner[b] != -1:
                        raise AllocationError(f"bucket {b} is owned by two arms")
                    owner[b] = index
        if -1 in owner:
            raise AllocationError(f"bucket {owner.index(-1)} is owned by no arm")
        return tuple(owner)

    @classmethod
    def _from_owner(cls, arms: Sequence[str], owner: Sequence[int]) -> Allocation:
        per_arm = _ranges_from_owner(owner, len(arms))
        return cls(tuple(arms), {arm: tuple(per_arm[i]) for i, arm in enumerate(arms)})

    @classmethod
    def initial(cls, weights: Mapping[str, float]) -> Allocation:
        """Contiguous ranges in arm order: arm 0 gets [0, c0), arm 1 [c0, c0 + c1), ..."""
        counts = weights_to_counts(weights)
        owner: list[int] = []
        for index, arm in enumerate(weights):
            owner.extend([index] * counts[arm])
        return cls._from_owner(list(weights), owner)

    def reweight(self, weights: Mapping[str, float]) -> Allocation:
        """The allocation for ``weights`` that moves exactly Σ|Δcount|/2 buckets from this one.

        Shrinking (or removed) arms release their highest buckets; growing (or new) arms take the
        lowest released buckets, in arm order. No bucket moves between two arms that both keep
        or grow their share, so a growing canary never sends a treated user back.
        """
        targets = weights_to_counts(weights)
        new_arms = list(weights)
        new_index = {arm: i for i, arm in enumerate(new_arms)}
        old_owner = self._table
        members: dict[str, list[int]] = {arm: [] for arm in self.arms}
        for b, i in enumerate(old_owner):
            members[self.arms[i]].append(b)
        owner = [-1] * NUM_BUCKETS
        released: list[int] = []
        for arm, buckets in members.items():
            keep = min(len(buckets), targets.get(arm, 0))
            for b in buckets[:keep]:
                owner[b] = new_index[arm]
            released.extend(buckets[keep:])
        released.sort()
        pos = 0
        for arm in new_arms:
            have = min(len(members.get(arm, ())), targets[arm])
            need = targets[arm] - have
            for b in released[pos : pos + need]:
                owner[b] = new_index[arm]
            pos += need
        return Allocation._from_owner(new_arms, owner)

    def table(self) -> tuple[int, ...]:
        """bucket → index into ``arms``, for O(1) lookups on the hot path."""
        return self._table

    def arm_for(self, bucket: int) -> str:
        return self.arms[self._table[bucket]]

    def counts(self) -> dict[str, int]:
        return {arm: sum(e - s for s, e in self.ranges.get(arm, ())) for arm in self.arms}

    def weights(self) -> dict[str, float]:
        return {arm: 100.0 * c / NUM_BUCKETS for arm, c in self.counts().items()}

    def moved(self, other: Allocation) -> int:
        """How many buckets belong to a differently named arm in ``other``."""
        return sum(
            self.arms[a] != other.arms[b] for a, b in zip(self._table, other._table, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arms": list(self.arms),
            "ranges": {arm: [list(r) for r in self.ranges.get(arm, ())] for arm in self.arms},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        try:
            arms = tuple(str(a) for a in data["arms"])
            ranges = {
                str(arm): tuple((int(s), int(e)) for s, e in rs)
                for arm, rs in data["ranges"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            raise AllocationError(
                'allocation must look like {"arms": [...], "ranges": {arm: [[start, end], ...]}}'
            ) from None
        return cls(arms, ranges)
