"""``evaluator.results`` on a real experiment: the loaded series add up to the evaluator's own
aggregates and its final test; the bucket choice and latency quantiles; and the module stays
free of matplotlib and the report package, for the readers of results that draw nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from evaluator.results import (
    ExperimentResults,
    bucket_width,
    histogram_quantile,
    load_results,
    metric_series,
)
from evaluator.stats import ArmStats, sequential_test
from tests.evaluator.conftest import Decided


def test_report_series_match_the_evaluators_aggregates(decided: Decided) -> None:
    data: ExperimentResults = asyncio.run(load_results(decided.url, "exp", None))
    assert data.n_buckets <= 61 and data.arms == ["control", "treatment"]
    for arm in data.arms:
        t = decided.totals[arm]
        assert int(data.served[arm].sum()) == t.served
        n, correct, _ = data.metric[arm].sum(axis=0)
        assert (int(n), int(correct)) == (t.outcome_n, t.correct)
        assert sum(data.latency[arm].values()) == t.served
    # The last point of the confidence sequence is the test on all the data.
    series = metric_series(data)
    c, t = (decided.totals[a] for a in data.arms)
    final = sequential_test(
        ArmStats(c.outcome_n, c.correct, c.correct), ArmStats(t.outcome_n, t.correct, t.correct)
    )
    assert series.effect["treatment"][-1] == pytest.approx(final.effect)
    assert series.lo["treatment"][-1] == pytest.approx(final.ci[0])
    assert series.hi["treatment"][-1] == pytest.approx(final.ci[1])
    # Shadow pairs over time add up to the evaluator's pairwise summary.
    pairs = data.shadow_pairs["logreg"].sum(axis=0)
    summary = data.shadow_summary["logreg"]
    assert int(pairs[0]) == summary["pairs"] > 0
    assert pairs[1] / pairs[0] == pytest.approx(summary["agreement"])
    assert [(d["action"], d["source"]) for d in data.markers] == [
        ("create", "admin"),
        ("promote", "policy"),
    ]


def test_bucket_width_and_latency_quantiles() -> None:
    assert bucket_width(3.0, None) == 0.05
    assert bucket_width(3600.0, None) == 60.0
    assert bucket_width(30 * 86400.0, None) == 43200.0
    assert bucket_width(100.0, 1.0) == 1.0
    assert bucket_width(1e6, 1.0) == 1e6 / 2000
    # 1000 rows in one fine bin [2^(320/32), 2^(321/32)) = [1024, 1046.4) µs.
    assert 1024.0 <= histogram_quantile({320: 1000}, 0.5) < 1046.5
    assert histogram_quantile({320: 99, 352: 1}, 0.99) < 1046.5
    assert histogram_quantile({320: 98, 352: 2}, 0.99) >= 2048.0
    assert np.isnan(histogram_quantile({}, 0.5))


def test_importing_results_leaves_matplotlib_and_the_report_out() -> None:
    """In a fresh interpreter (this one has imported everything); lint-imports checks the imports
    inside functions too."""
    code = (
        "import sys, evaluator.results; print(sorted(m for m in sys.modules"
        " if m.partition('.')[0] == 'matplotlib' or m.startswith('evaluator.report')))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
