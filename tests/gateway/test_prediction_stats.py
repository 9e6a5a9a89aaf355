"""The vectorised request metrics equal a row-by-row count of the same log rows."""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import _BOUNDS_US, _CODE_NAMES, CONFIDENCE_BOUNDS, PredictionStats

ROW = st.tuples(
    st.sampled_from(["exp-a", "exp-b"]),
    st.sampled_from(["control", "treatment", "shadow-x"]),
    st.one_of(st.integers(0, 2_000_000), st.sampled_from([int(b) for b in _BOUNDS_US])),
    st.booleans(),
    st.sampled_from([0, 0, 0, 3, 13, 14, 99]),  # 99: not a gRPC code, shown as "99"
    # the row's scores: none (a failed call) or 1..4 classes, bounds and NaN included
    st.lists(
        st.one_of(st.floats(0, 1, width=32), st.sampled_from([*CONFIDENCE_BOUNDS, float("nan")])),
        max_size=4,
    ),
    st.floats(1.7e9, 1.8e9),  # ts
)


def log_row(
    exp: str, arm: str, lat_us: int, shadow: bool, status: int, scores: list[float], ts: float
) -> tuple[Any, ...]:
    raw = np.asarray(scores, dtype="<f4").tobytes()
    return ("rid", ts, exp, 1, 7, 1, arm, "m", "1", "a" * 64, 1, raw, lat_us, shadow, "gw",
            status)  # fmt: skip


Batches = list[list[tuple[Any, ...]]]


def reference(
    batches: Batches,
) -> tuple[dict[Any, int], dict[Any, list[float]], dict[Any, Any], dict[Any, float]]:
    counts: dict[Any, int] = {}
    last: dict[Any, float] = {}
    latency: dict[Any, list[float]] = {}
    confidence: dict[Any, list[float]] = {}
    for rows in batches:
        for r in rows:
            key = (r[2], r[6], _CODE_NAMES.get(r[15], str(r[15])), r[13])
            counts[key] = counts.get(key, 0) + 1
            last[(r[2], r[6], r[13])] = max(r[1], last.get((r[2], r[6], r[13]), r[1]))
            hist = latency.setdefault(key, [0.0] * (len(_BOUNDS_US) + 2))
            hist[bisect.bisect_left(_BOUNDS_US, r[12])] += 1
            hist[-1] += r[12] / 1e6
            scores = np.frombuffer(r[11], dtype="<f4")
            if len(scores):
                top = float(np.max(scores))  # NaN if any score is NaN, as np.maximum
                conf = confidence.setdefault(
                    (r[2], r[6], r[13]), [0.0] * (len(CONFIDENCE_BOUNDS) + 2)
                )
                conf[len(CONFIDENCE_BOUNDS) if top != top else bisect.bisect_left(
                    CONFIDENCE_BOUNDS, top)] += 1  # fmt: skip
                conf[-1] += 0.0 if top != top else top
    return counts, latency, confidence, last


# numeric: float32 maxima (NaN included) and sums, in numpy's SIMD-dispatched reductions.
@pytest.mark.numeric
@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(ROW, max_size=40), max_size=4))
def test_observe_equals_a_row_by_row_count(batches: list[list[tuple[Any, ...]]]) -> None:
    rows = [[log_row(*r) for r in batch] for batch in batches]
    stats = PredictionStats()
    for batch in rows:
        stats.observe(batch)
    counts, latency, confidence, last = reference(rows)
    assert stats.counts == counts
    assert stats.last == last  # the newest row's ts: exact (a maximum, no arithmetic)
    for got_hists, want_hists in ((stats.latency, latency), (stats.confidence, confidence)):
        assert got_hists.keys() == want_hists.keys()
        for key, hist in want_hists.items():
            got = got_hists[key]
            assert got[:-1] == hist[:-1], key  # bucket counts exactly (on a bound is "le")
            assert abs(got[-1] - hist[-1]) < 1e-6 * max(1.0, hist[-1])
