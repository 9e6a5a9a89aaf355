"""``evaluator.results`` on a real experiment: the loaded series add up to the evaluator's own
aggregates and its final test; the bucket choice and latency quantiles; and the module stays
free of matplotlib and the report package, for the readers of results that draw nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
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
from tests.conftest import execute_sql, with_database
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


@pytest.fixture
def decided_copy(decided: Decided, pg_url: str) -> Iterator[str]:
    """A copy of the decided database, to add rows to."""
    name = f"abgate_test_{uuid.uuid4().hex[:12]}"
    source = urlsplit(decided.url).path.lstrip("/")
    asyncio.run(execute_sql(pg_url, f'CREATE DATABASE "{name}" TEMPLATE "{source}"'))
    try:
        yield with_database(pg_url, name)
    finally:
        asyncio.run(execute_sql(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _log_twice(url: str) -> None:
    """What a retry on another worker, a reused id and a forger leave in the log: a second
    served row (another label, a slow latency) of 40 requests, a second shadow row of 20, an
    outcome from another client for 40 and a later any-identity outcome for 20 (flipped
    values)."""
    conn = await asyncpg.connect(url)
    try:
        cols = [
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'predictions'"
                " AND column_name NOT IN ('seq', 'ingested_at') ORDER BY ordinal_position"
            )
        ]
        changed = {
            "ts": "ts + interval '1 ms'",
            "label": "1 - label",
            "latency_us": "latency_us * 50",
        }
        select = ", ".join(changed.get(c, c) for c in cols)
        for shadow, n in ((False, 40), (True, 20)):
            added = await conn.execute(
                f"INSERT INTO predictions ({', '.join(cols)}) SELECT {select} FROM predictions "
                f"WHERE experiment = 'exp' AND shadow = $1 AND status = 0 "
                f"AND request_id IN (SELECT request_id FROM predictions WHERE experiment = 'exp' "
                f"AND shadow GROUP BY 1 ORDER BY min(seq) LIMIT $2)",
                shadow,
                n,
            )
            assert added == f"INSERT 0 {n}"
        for identity, any_identity, n in (("mallory", False, 40), ("ops", True, 20)):
            added = await conn.execute(
                "INSERT INTO outcomes (request_id, value, source, client_identity, any_identity) "
                "SELECT request_id, 1 - value, source, $1, $2 FROM outcomes ORDER BY seq LIMIT $3",
                identity,
                any_identity,
                n,
            )
            assert added == f"INSERT 0 {n}"
    finally:
        await conn.close()


def test_no_series_counts_a_request_twice(decided: Decided, decided_copy: str) -> None:
    """Rows logged twice (issue #15, item 3) change none of the report's series: each request
    id counts once, each outcome source once, an outcome from another client not at all."""
    before = asyncio.run(load_results(decided.url, "exp", None))
    asyncio.run(_log_twice(decided_copy))
    after = asyncio.run(load_results(decided_copy, "exp", None))
    assert (after.t0, after.t1, after.n_buckets) == (before.t0, before.t1, before.n_buckets)
    for series in ("served", "errors", "metric", "shadow_pairs"):
        old, new = getattr(before, series), getattr(after, series)
        assert sorted(old) == sorted(new), series
        for key in old:
            np.testing.assert_array_equal(new[key], old[key], err_msg=f"{series}[{key}]")
    assert after.latency == before.latency


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
