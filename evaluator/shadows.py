"""Shadow models against the served prediction of the same requests: what ``abgate
experiments show`` reports. Pure: pairwise sums (``shadow_stats``) in, a summary out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from evaluator.stats import mcnemar, wilson_interval


def _mean_ci(total: float, total_sq: float, n: float, z: float = 1.96) -> dict[str, Any]:
    if n < 1:
        return {"mean": None, "ci": [None, None]}
    mean = total / n
    var = max(0.0, (total_sq - total * total / n) / (n - 1)) if n > 1 else math.inf
    half = z * math.sqrt(var / n) if math.isfinite(var) else math.inf
    finite = math.isfinite(half)
    return {"mean": mean, "ci": [mean - half if finite else None, mean + half if finite else None]}


def compare(sums: Mapping[str, float]) -> dict[str, Any]:
    """One shadow's comparison: agreement rate (Wilson 95 % CI), mean score and latency deltas
    (shadow − served, normal 95 % CI), shadow error rate, and paired accuracy with McNemar's
    exact test once outcomes are in."""
    pairs = int(sums["pairs"])
    errors = int(sums["shadow_errors"])
    agree = int(sums["agree"])
    labelled = int(sums["labelled"])
    b, c = int(sums["served_only_right"]), int(sums["shadow_only_right"])
    both = int(sums["both_right"])
    out: dict[str, Any] = {
        "pairs": pairs,
        "shadow_error_rate": errors / (pairs + errors) if pairs + errors else None,
        "agreement": agree / pairs if pairs else None,
        "agreement_ci": list(wilson_interval(agree, pairs)) if pairs else [None, None],
        "score_delta": _mean_ci(sums["score_delta_sum"], sums["score_delta_sumsq"], pairs),
        "latency_delta_us": _mean_ci(sums["latency_delta_sum"], sums["latency_delta_sumsq"], pairs),
        "labelled": labelled,
    }
    if labelled:
        out["served_accuracy"] = (both + b) / labelled
        out["shadow_accuracy"] = (both + c) / labelled
        out["mcnemar"] = {"served_only_right": b, "shadow_only_right": c, "p_value": mcnemar(b, c)}
    return out
