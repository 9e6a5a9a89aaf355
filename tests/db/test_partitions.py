"""Daily partitions of predictions on a real PostgreSQL: created ahead, rows routed into them,
days already in the default partition left alone, old days dropped without touching the
evaluator's aggregates; and the ``abgate db partitions`` command."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time

import asyncpg

from abgate.db.migrate import migrate
from abgate.db.partitions import drop_partitions_before, ensure_partitions, list_partitions
from evaluator.aggregate import aggregate, arm_totals

DAY = dt.date(2030, 1, 10)

INSERT = (
    "INSERT INTO predictions (request_id, ts, experiment, config_version, bucket, hash_version,"
    " arm, model_id, model_version, model_sha256, label, scores, latency_us, shadow,"
    " gateway_id) VALUES ($1, $2, 'exp', 1, 0, 1, 'control', 'm', '1', $3, 1, '{0.2,0.8}',"
    " 100, false, 'gw') RETURNING tableoid::regclass::text"
)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), dt.UTC)


def test_partitions_lifecycle(fresh_db: str) -> None:
    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            # A row of a day with no partition yet goes to the default partition...
            where = await conn.fetchval(INSERT, "early", at(DAY + dt.timedelta(days=2)), "a" * 64)
            assert where == "predictions_default"
            created = await ensure_partitions(conn, days_ahead=4, today=DAY)
            # ...and that day stays there: creating its partition would strand the row.
            assert [c for c in created if c.startswith("predictions_")] == [
                "predictions_20300110", "predictions_20300111", "predictions_20300113",
                "predictions_20300114",
            ]  # fmt: skip
            # prediction_features gets its own partition of every day (its default is empty).
            assert [c for c in created if c.startswith("prediction_features_")] == [
                f"prediction_features_{DAY + dt.timedelta(days=k):%Y%m%d}" for k in range(5)
            ]
            assert await ensure_partitions(conn, days_ahead=4, today=DAY) == []
            for i, day in enumerate([DAY, DAY + dt.timedelta(days=1), DAY]):
                where = await conn.fetchval(INSERT, f"r{i}", at(day), "a" * 64)
                assert where == f"predictions_{day:%Y%m%d}"
            # A request id logged twice on each of the two days (a retry on another worker).
            await conn.fetchval(INSERT, "r0", at(DAY, 13), "a" * 64)
            await conn.fetchval(INSERT, "r1", at(DAY + dt.timedelta(days=1), 13), "a" * 64)
            # The evaluator folds them in; retention drops the first day afterwards.
            await aggregate(conn, settle=0.0, now=time.time() + 1)
            before = await arm_totals(conn, "exp")
            assert before["control"].served == 4  # early, r0, r1, r2: each once
            assert await conn.fetchval("SELECT count(*) FROM duplicate_rows") == 2
            dropped = await drop_partitions_before(conn, DAY + dt.timedelta(days=1))
            assert sorted(dropped) == ["prediction_features_20300110", "predictions_20300110"]
            assert await conn.fetchval("SELECT count(*) FROM predictions") == 3
            # The record of the dropped day's repeat goes with it; the other day's stays.
            assert [r["request_id"] for r in await conn.fetch("TABLE duplicate_rows")] == ["r1"]
            assert (await arm_totals(conn, "exp"))["control"].served == before["control"].served
            names = [p.name for p in await list_partitions(conn)]
            assert "predictions_20300110" not in names and "predictions_default" in names
        finally:
            await conn.close()

    asyncio.run(run())


def test_db_partitions_command(fresh_db: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "db", "partitions", "--database-url", fresh_db,
         "--ensure-days", "2", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    today = dt.datetime.now(dt.UTC).date()
    assert out["created"] == [
        f"{table}_{today + dt.timedelta(days=k):%Y%m%d}"
        for k in range(3)
        for table in ("predictions", "prediction_features")
    ]
    assert {p["name"] for p in out["partitions"]} >= {"predictions_default", *out["created"]}
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "db", "partitions", "--database-url", fresh_db,
         "--drop-older-than-days", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--drop-older-than-days" in r.stderr
