"""The prediction log writer against a real PostgreSQL: batches, replays, outages."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest

from abgate.db.migrate import migrate
from abgate.errors import Unavailable
from gateway.logwriter import LogWriter, Row
from gateway.pgsink import PostgresSink
from tests.conftest import execute_sql

SCORES = np.array([0.25, 0.75], dtype="<f4").tobytes()  # as the gateway queues scores


def row(i: int, ts: float | None = None) -> Row:
    t = ts if ts is not None else time.time()
    model = ("demo-logreg", "1", "a" * 64)
    return (f"req-{i}", t, "demo", 1, i % 10_000, 1, "control", *model, i % 2, SCORES,
            150, False, "gw-test", 0, "client-a")  # fmt: skip


async def write_staged(w: LogWriter, batch: list[Row]) -> int:
    """``batch`` through the PostgreSQL sink's staging path (the one replays take)."""
    assert isinstance(w.sink, PostgresSink)
    return (await w.sink.write_staged(batch)).inserted


async def count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))
    finally:
        await conn.close()


def test_every_appended_row_lands_once(fresh_db: str) -> None:
    async def run() -> tuple[int, LogWriter]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db), batch_rows=500, max_age=0.05)
        await w.start()
        for i in range(5000):
            w.append(row(i))
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let the writer run, as the event loop would
        await w.stop()
        return await count(fresh_db), w

    n, w = asyncio.run(run())
    assert n == 5000 and w.counters.written == 5000 and w.queued == 0


def test_replayed_batch_changes_nothing(fresh_db: str) -> None:
    async def run() -> tuple[int, int, LogWriter]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db))
        await w.start()
        await w.connected()
        batch = [row(i, ts=1_790_000_000.0 + i) for i in range(300)]
        first = await w.write(batch)
        second = await w.write(batch)
        await w.stop()
        return first, second, w

    first, second, w = asyncio.run(run())
    assert (first, second) == (300, 0)
    assert w.counters.duplicates == 300
    assert w.counters.staged_batches == 1  # the direct COPY met the first copy and stood aside
    assert asyncio.run(count(fresh_db)) == 300


@pytest.mark.parametrize("first_path", ["direct", "staged"])
def test_a_row_lands_on_the_same_key_by_either_path(fresh_db: str, first_path: str) -> None:
    """A batch partly written by one path and replayed whole by the other adds only what was
    missing: both paths turn the float timestamp into the same timestamptz (PostgreSQL's
    rounding), so a replayed row meets its first copy on the primary key."""
    rng = np.random.default_rng(11)
    stamps = 1_790_000_000.0 + rng.random(400) * 1e6  # full float precision, every rounding case
    batch = [row(i, ts=float(t)) for i, t in enumerate(stamps)]

    async def run() -> tuple[int, int]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db))
        await w.start()
        await w.connected()
        write = w.write if first_path == "direct" else partial(write_staged, w)
        replay = partial(write_staged, w) if first_path == "direct" else w.write
        first = await write(batch[:250])
        second = await replay(batch)
        await w.stop()
        return first, second

    first, second = asyncio.run(run())
    assert (first, second) == (250, 150)
    assert asyncio.run(count(fresh_db)) == 400


@pytest.mark.parametrize("rid", ["ascii", "utf-8"])
def test_direct_copy_stores_what_the_staging_path_stores(fresh_db: str, rid: str) -> None:
    """Every column of rows written by the binary COPY equals the same rows written through
    the staging table: text (non-ASCII too), request ids of many lengths, integers at their
    limits, flags, timestamps, two arms and scores of several widths in one batch (none, 2, 3
    classes) — so the COPY lays out many groups."""
    model = ("démo-ĝbdt", "v1.0-ß", "f" * 64)
    shapes = [b"", SCORES, np.array([0.1, 0.2, 0.7], "<f4").tobytes()]  # 0, 2 and 3 classes
    rows = []
    for i in range(90):
        scores = shapes[i % 3]
        rows.append(
            (f"{'ид' if rid == 'utf-8' else 'id'}-{i}-{'x' * (i % 7)}",
             1_790_000_000.123456 + i * 0.37, "exp-é", 2**62 + i,
             i * 111 % 10_000, 32767 - i, "arm-ü" if i % 2 else "control", *model,
             -(2**62) if i % 5 == 0 else i, scores, 2**31 - 1 - i, i % 4 == 0, "gw-ø", i % 3,
             f"client-{'ø' * (i % 3)}")
        )  # fmt: skip

    async def run() -> list[list[asyncpg.Record]]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db))
        await w.start()
        await w.connected()
        assert await w.write([(f"direct/{r[0]}", *r[1:]) for r in rows]) == len(rows)
        assert await partial(write_staged, w)([(f"staged/{r[0]}", *r[1:]) for r in rows]) == len(
            rows
        )
        assert w.counters.staged_batches == 0
        await w.stop()
        conn = await asyncpg.connect(fresh_db)
        try:
            return [
                await conn.fetch(
                    "SELECT substr(request_id, length($1) + 1) AS rid, ts, experiment, "
                    "config_version, bucket, hash_version, arm, model_id, model_version, "
                    "model_sha256, label, scores, latency_us, shadow, gateway_id, status, "
                    "client_identity "
                    "FROM predictions WHERE starts_with(request_id, $1) ORDER BY 1",
                    prefix,
                )
                for prefix in ("direct/", "staged/")
            ]
        finally:
            await conn.close()

    direct, staged = asyncio.run(run())
    assert len(direct) == len(staged) == len(rows)
    assert [dict(r) for r in direct] == [dict(r) for r in staged]
    by_rid = {r["rid"]: r for r in direct}
    for r in rows:  # and both are what was queued
        got = by_rid[r[0]]
        assert got["ts"].timestamp() == pytest.approx(r[1], abs=1e-6)
        assert (got["experiment"], got["config_version"], got["bucket"], got["hash_version"],
                got["arm"], got["model_id"], got["model_version"], got["model_sha256"],
                got["label"]) == r[2:11]  # fmt: skip
        assert np.array_equal(np.asarray(got["scores"], "<f4").tobytes(), r[11])
        assert (got["latency_us"], got["shadow"], got["gateway_id"], got["status"],
                got["client_identity"]) == r[12:]  # fmt: skip


def test_rows_survive_a_database_outage(fresh_db: str, pg_url: str) -> None:
    name = urlsplit(fresh_db).path.lstrip("/")

    async def admin(sql: str) -> None:
        await execute_sql(pg_url, sql)

    async def run() -> tuple[int, LogWriter]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db), batch_rows=100, max_age=0.05)
        await w.start()
        for i in range(200):
            w.append(row(i))
        await asyncio.sleep(0.5)
        # Outage: no new connections, existing ones killed.
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        for i in range(200, 1200):
            w.append(row(i))
            if i % 100 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        assert w.counters.failed_flushes > 0 and w.queued > 0
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await w.stop(timeout=30)
        return await count(fresh_db), w

    n, w = asyncio.run(run())
    assert n == 1200 and w.queued == 0
    assert w.counters.dead_lettered == 0  # a lost connection says nothing about the rows


def test_full_queue_refuses_instead_of_losing(fresh_db: str) -> None:
    async def run() -> LogWriter:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db), max_queued_rows=10, batch_rows=1000, max_age=60)
        await w.start()
        for i in range(10):
            w.append(row(i))
        with pytest.raises(Unavailable, match="log is full"):
            w.append(row(10))
        await w.stop()
        return w

    w = asyncio.run(run())
    assert w.counters.refused == 1 and w.counters.written == 10


def test_a_batch_that_does_not_fit_is_refused_whole(fresh_db: str) -> None:
    """``extend`` (PredictBatch, outcomes) takes all of a batch's rows or none of them."""

    async def run() -> LogWriter:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db), max_queued_rows=10, batch_rows=1000, max_age=60)
        await w.start()
        w.extend([row(i) for i in range(6)])
        with pytest.raises(Unavailable, match="log is full"):
            w.extend([row(i) for i in range(6, 11)])  # 11 > 10: none of the 5 taken
        assert w.queued == 6
        w.extend([row(i) for i in range(6, 10)])  # exactly fits
        await w.stop()
        return w

    w = asyncio.run(run())
    assert w.counters.refused == 5 and w.counters.written == 10


@pytest.mark.parametrize("path", ["direct", "staged"])
def test_scores_arrive_exactly_as_the_model_gave_them(fresh_db: str, path: str) -> None:
    """Scores travel as float32 bytes; the binary COPY lays them out as a real[] and the staging
    path has PostgreSQL decode them (migration 0005): by either path every float32 — extremes,
    subnormals, -0, ±Inf, NaN — and every width (none, the inlined 1..8 classes, wider vectors)
    lands in predictions.scores as the same real."""
    rng = np.random.default_rng(5)
    specials = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
         np.inf, -np.inf, np.nan, 1.0, 0.5, 1 / 3],
        dtype="<f4",
    )  # fmt: skip
    vectors: list[np.ndarray] = []
    for width in range(0, 13):
        for _ in range(20):
            v = rng.standard_normal(width).astype("<f4") * np.float32(10.0) ** rng.integers(-40, 38)
            if width:
                v[rng.integers(width)] = rng.choice(specials)
            vectors.append(v.astype("<f4"))
    vectors.append(specials)
    vectors += [rng.random(2, dtype=np.float32) for _ in range(200)]  # the common two classes
    bits = [v.view("<u4") for v in vectors]  # raw bits, so -0 and NaN compare exactly

    async def run() -> list[np.ndarray]:
        await migrate(fresh_db)
        w = LogWriter(PostgresSink(fresh_db))
        await w.start()
        await w.connected()
        batch = [(*row(i)[:11], v.tobytes(), *row(i)[12:]) for i, v in enumerate(vectors)]
        write = w.write if path == "direct" else partial(write_staged, w)
        assert await write(batch) == len(vectors)
        assert w.counters.staged_batches == 0
        await w.stop()
        conn = await asyncpg.connect(fresh_db)
        try:
            got = await conn.fetch("SELECT request_id, scores FROM predictions")
        finally:
            await conn.close()
        by_id = {r["request_id"]: r["scores"] for r in got}
        return [np.asarray(by_id[f"req-{i}"], dtype="<f4") for i in range(len(vectors))]

    stored = asyncio.run(run())
    for i, (want, got) in enumerate(zip(bits, stored, strict=True)):
        assert got.shape == want.shape, i
        # NaN payloads may differ; every other value must match bit for bit.
        nan = np.isnan(vectors[i])
        assert np.array_equal(np.isnan(got), nan), (i, vectors[i], got)
        assert np.array_equal(got.view("<u4")[~nan], want[~nan]), (i, vectors[i], got)
