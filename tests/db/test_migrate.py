"""Migrations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import asyncpg
import pytest

from abgate.db import migrate as mig
from abgate.errors import FailedPrecondition


async def fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_migrate_applies_once_and_records(fresh_db: str) -> None:
    names = [m.name for m in mig.available()]
    assert names and names == sorted(names)
    assert asyncio.run(mig.migrate(fresh_db)) == names
    assert asyncio.run(mig.migrate(fresh_db)) == []
    assert asyncio.run(mig.applied(fresh_db)) == names
    for table in ("predictions", "outcomes", "experiment_versions", "models"):
        assert asyncio.run(fetchval(fresh_db, "SELECT to_regclass($1)::text", table)) == table


def test_concurrent_migrators_serialize(fresh_db: str) -> None:
    async def both() -> list[list[str]]:
        return list(await asyncio.gather(mig.migrate(fresh_db), mig.migrate(fresh_db)))

    results = asyncio.run(both())
    assert sorted(len(r) for r in results) == [0, len(mig.available())]


def test_edited_migration_is_refused(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(mig.migrate(fresh_db))
    original = mig.available()
    edited = [mig.Migration(original[0].name, original[0].sql + "\n-- edited\n"), *original[1:]]
    monkeypatch.setattr(mig, "available", lambda: edited)
    with pytest.raises(FailedPrecondition, match="changed after it was applied"):
        asyncio.run(mig.migrate(fresh_db))


def test_prediction_replays_are_harmless(fresh_db: str) -> None:
    asyncio.run(mig.migrate(fresh_db))
    row = ("r1", dt.datetime(2026, 11, 24, tzinfo=dt.UTC), "demo", 1, 42, 1, "control", "m",
           "1", "a" * 64, 1, [0.1, 0.9], 120, False, "gw")  # fmt: skip
    insert = (
        "INSERT INTO predictions (request_id, ts, experiment, config_version, bucket,"
        " hash_version, arm, model_id, model_version, model_sha256, label, scores, latency_us,"
        " shadow, gateway_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
        " ON CONFLICT DO NOTHING"
    )

    async def run() -> int:
        conn = await asyncpg.connect(fresh_db)
        try:
            for _ in range(3):
                await conn.execute(insert, *row)
            return int(await conn.fetchval("SELECT count(*) FROM predictions"))
        finally:
            await conn.close()

    assert asyncio.run(run()) == 1


def test_db_cli_embedded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = [sys.executable, "-m", "abgate", "db"]
    data = ["--pg-data", str(tmp_path / "pg"), "--json"]
    first = subprocess.run([*base, "migrate", *data], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert '"applied_now": ["0001_initial.sql"' in first.stdout
    status = subprocess.run([*base, "status", *data], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and '"pending": []' in status.stdout
    bad = subprocess.run(
        [*base, "status", "--database-url", "postgresql://nobody@127.0.0.1:1/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr
