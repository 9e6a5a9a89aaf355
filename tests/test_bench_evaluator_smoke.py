"""benchmarks/bench_evaluator at a tiny size against the test server: it runs end to end, its
correctness check ran and passed, the report has the documented shape and it drops its
databases. Timings are not compared (too noisy at this size)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import pytest

from abgate.db.migrate import migrate
from benchmarks import bench_evaluator as bench
from evaluator.aggregate import aggregate


async def _bench_databases(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'abgate\\_bench\\_20000\\_%'"
        )
        return [r["datname"] for r in rows]
    finally:
        await conn.close()


def _series(value: object, runs: int) -> None:
    assert isinstance(value, dict) and set(value) == {"median", "runs"}
    assert len(value["runs"]) == runs and all(x > 0 for x in value["runs"])
    assert min(value["runs"]) <= value["median"] <= max(value["runs"])


def test_bench_evaluator_tiny(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = asyncio.run(_bench_databases(pg_url))
    out = tmp_path / "evaluator.json"
    argv = ["--rows", "20000", "--new-rows", "1000", "--repeats", "1", "--tick-rows", "5000"]
    report = bench.main([*argv, "--database-url", pg_url, "--out", str(out)])

    assert json.loads(out.read_text()) == report
    assert report["repeats"] == 1 and report["postgres"]["server_version"]
    (r,) = report["sizes"]
    assert r["rows"] == 20_000 and r["new_rows"] == 1_000
    assert r["load_s"] > 0 and r["vacuum_analyze_s"] > 0
    _series(r["full_tick_s"], 1)
    _series(r["incremental_tick_s"], 1)
    _series(r["incremental_custom_plan_tick_s"], 1)
    assert r["ratio"] > 0 and r["ratio_custom_plan"] > 0
    # The full pass read the log 5,000 rows of each table at a time: 4 transactions (the
    # predictions' seq is 1..20,000), those of the outcomes (~12,000 rows) in the first 3.
    assert report["tick_rows"] == 5_000 and r["full_tick_transactions"] == 4
    # Both tick statements ran once per transaction on the server-like connection: the full
    # pass's, the small ticks up to the plan cache's 5 and the measured one.
    plans = {name: sum(r["plans"][name].values()) for name in ("predictions_new", "outcomes_new")}
    assert plans == {
        "predictions_new": 4 + bench.PLAN_CACHE_TICKS,
        "outcomes_new": -(-r["outcomes"] // 5_000) + bench.PLAN_CACHE_TICKS,
    }
    assert r["policy_ms"]["median"] > 0 and r["policy_ms"]["runs"] == bench.POLICY_RUNS
    assert r["policy_action"] in {"continue", "promote", "keep", "stop"}

    # The check compared the aggregates with the logs: every row generated for `bench` (about
    # 70% of the log, after 4 warm-up and 2 measured ticks of new rows) was counted.
    check = r["check"]
    assert check["passed"] is True
    total = 20_000 + (bench.PLAN_CACHE_TICKS - 1) * bench.WARMUP_ROWS + 2 * 1_000
    assert r["rows_after"] == total
    assert 0.65 * total < check["served"] < 0.75 * total
    assert check["latency_rows"] == check["served"]
    assert 0 < check["errors"] < 0.02 * check["served"]
    assert 0.55 * check["served"] < check["outcome_n"] < 0.70 * check["served"]
    assert 0 < check["correct"] < check["outcome_n"]

    table = capsys.readouterr().out
    assert "| 20,000 |" in table and "full tick s" in table
    assert asyncio.run(_bench_databases(pg_url)) == before  # its database is gone


def test_check_fails_loudly_when_the_aggregates_disagree(pg_url: str) -> None:
    async def run() -> None:
        name = "abgate_bench_check_test"
        admin = await asyncpg.connect(pg_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = bench.with_database(pg_url, name)
            await migrate(url)
            conn = await asyncpg.connect(url)
            try:
                await bench.load(conn, 0, 2_000, 2_000)
                await aggregate(conn, settle=0.0, now=time.time() + 10)
                assert (await bench.check(conn))["served"] > 0
                await conn.execute("UPDATE arm_stats SET served = served + 1")
                with pytest.raises(bench.BenchmarkError, match="served"):
                    await bench.check(conn)
            finally:
                await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    asyncio.run(run())
