"""The live dashboard (issue #17): pages served by the evaluator's HTTP server, drawing what the
HTTP/JSON API answers, so the page, the API, the report and ``experiments show`` read one
results model (``evaluator.results``).

The pages themselves (``static/``: HTML, app.js, app.css and the vendored uPlot chart library,
no CDN) hold no data and need no token; every number comes from the API with the bearer token
the user signs in with (kept in the tab's sessionStorage; the demo prints a link whose
``#token=`` fragment signs in, a fragment no server or log sees). The pages poll the API every
``POLL_SECONDS`` and redraw without a reload.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.results import ExperimentResults, MetricSeries

STATIC = Path(__file__).parent / "static"
POLL_SECONDS = 2.0


def _list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def timeline_json(data: ExperimentResults, series: MetricSeries) -> dict[str, Any]:
    """An experiment's results over time, one point per bucket end: each arm's share of the
    served rows against the split then in force, the primary metric per arm (cumulative, as the
    policy sees it) with its always-valid interval, each treatment's effect with its
    always-valid interval and p-value, the min-effect line, shadow agreement, the decisions as
    markers, and drift PSI per measure."""
    ends = [float(t) for t in series.ends]
    nb = data.n_buckets
    zeros = np.zeros(nb)
    served = {arm: np.asarray(data.served.get(arm, zeros), dtype=float) for arm in data.arms}
    total = sum(served.values(), np.zeros(nb))
    shares = {
        arm: _list(np.divide(100.0 * s, total, out=np.full(nb, np.nan), where=total > 0))
        for arm, s in served.items()
    }
    # The split in force at each bucket end: the latest version written by then.
    times = [v.created_at for v in data.versions]
    split: dict[str, list[float | None]] = {arm: [] for arm in data.arms}
    for t in ends:
        i = bisect.bisect_right(times, t) - 1
        weights = data.versions[max(i, 0)].state.weights
        for arm in data.arms:
            split[arm].append(weights.get(arm))
    shadows = {}
    for name, pairs in data.shadow_pairs.items():
        p = np.asarray(pairs, dtype=float)
        cum = np.cumsum(p, axis=0)
        shadows[name] = _list(
            np.divide(100.0 * cum[:, 1], cum[:, 0], out=np.full(nb, np.nan), where=cum[:, 0] > 0)
        )
    drift = {
        f"{arm} {data.measure_label(arm, measure)}": [
            [p.t, p.psi] for p in points if p.psi is not None and math.isfinite(p.psi)
        ]
        for (arm, measure), points in sorted(data.drift.items())
        if not measure.startswith("decay:")
    }
    state = data.state
    return {
        "experiment": data.name,
        "t0": data.t0,
        "t1": data.t1,
        "bucket_seconds": data.bucket_s,
        "ends": ends,
        "arms": list(data.arms),
        "served": {arm: _list(s) for arm, s in served.items()},
        "shares": shares,
        "split": split,
        "metric": state.primary_metric,
        "mean": {arm: _list(m) for arm, m in series.mean.items()},
        # each arm's mean with its always-valid interval (evaluator.stats.mean_confidence_sequence)
        "mean_lo": {arm: _list(v) for arm, v in series.mean_lo.items()},
        "mean_hi": {arm: _list(v) for arm, v in series.mean_hi.items()},
        "mean_confidence": 1.0 - series.mean_alpha,
        "effect": {
            t: {
                "effect": _list(series.effect[t]),
                "lo": _list(series.lo[t]),
                "hi": _list(series.hi[t]),
                "p_value": _list(series.p_value[t]),
            }
            for t in series.effect
        },
        "alpha": series.alpha,
        "min_effect": state.min_effect,
        "shadow_agreement": shadows,
        "markers": [
            {"ts": m.get("ts"), "action": m.get("action"), "text": m.get("recommendation", "")}
            for m in data.markers
        ],
        "drift": drift,
        "psi_warn": state.psi_warn,
        "psi_act": state.psi_act,
    }
