"""The disk spool: durable records, torn tails, limits; and the log writer spilling to it."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from abgate.db.migrate import migrate
from gateway.logwriter import LogWriter
from gateway.pgsink import PostgresSink
from gateway.spool import Spool, SpoolFull
from tests.conftest import execute_sql
from tests.gateway.test_logwriter import count, row


async def drain_spool(url: str, directory: Path) -> LogWriter:
    """A writer on the spool in ``directory``, run until it has replayed every segment (20 s at
    most), then stopped; returned for its counters."""
    w = LogWriter(PostgresSink(url), max_age=0.05, spool=Spool(directory))
    await w.start()
    deadline = time.monotonic() + 20
    while Spool(directory).segments() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await w.stop()
    return w


def test_append_read_delete(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    batches = [[[f"r{i}", i, [0.5, 0.5], bytes(range(i, 2 * i))]] for i in range(10)]
    for b in batches:
        spool.append(b)
    segments = spool.segments()
    assert len(segments) > 1  # rolled over at segment_bytes
    assert [b for seg in segments for b in spool.read(seg)] == batches
    reopened = Spool(tmp_path, segment_bytes=300)
    assert reopened.size == spool.size > 0
    assert spool.pending and reopened.pending
    for seg in segments:
        assert reopened.pending  # until the last one goes
        reopened.delete(seg)
    assert reopened.size == 0 and reopened.segments() == []
    assert not reopened.pending


def test_pending_knows_of_leftover_and_empty_segments(tmp_path: Path) -> None:
    """The writer replays only when ``pending``: a fresh spool has nothing, a leftover segment
    from an earlier process is pending even when empty (a crash before its first record), and
    deleting it clears the flag."""
    assert not Spool(tmp_path / "fresh").pending
    (tmp_path / "left").mkdir()
    leftover = tmp_path / "left" / "seg-000000000001.spool"
    leftover.write_bytes(b"")
    spool = Spool(tmp_path / "left")
    assert spool.pending and spool.size == 0
    assert list(spool.read(leftover)) == []
    spool.delete(leftover)
    assert not spool.pending


def test_torn_tail_and_corruption_are_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seg = spool.append([["a"]])
    spool.append([["b"]])
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # a crash mid-write
    assert list(spool.read(seg)) == [[["a"]]]
    flipped = bytearray(data)
    flipped[14] ^= 0xFF  # a flipped bit in the first record
    seg.write_bytes(bytes(flipped))
    assert list(spool.read(seg)) == []


def test_full_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    spool.append([["x" * 40]])
    with pytest.raises(SpoolFull):
        spool.append([["y" * 40]])


def test_writer_spills_during_outage_and_replays_once(
    fresh_db: str, pg_url: str, tmp_path: Path
) -> None:
    name = urlsplit(fresh_db).path.lstrip("/")
    spool_dir = tmp_path / "spool"
    kept = tmp_path / "kept"

    async def outage_then_stop() -> LogWriter:
        await migrate(fresh_db)
        await execute_sql(pg_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        w = LogWriter(PostgresSink(fresh_db), batch_rows=100, max_age=0.05, spool=Spool(spool_dir))
        await w.start()
        for i in range(1000):
            w.append(row(i))
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await w.stop(timeout=30)  # database still down: everything must be on disk
        return w

    w = asyncio.run(outage_then_stop())
    assert w.queued == 0 and w.counters.spooled == 1000
    assert w.counters.dead_lettered == 0  # refused connections are no reason to isolate rows
    shutil.copytree(spool_dir, kept)  # to replay the same spool a second time below

    async def recover(directory: Path) -> LogWriter:
        await execute_sql(pg_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        return await drain_spool(fresh_db, directory)

    first = asyncio.run(recover(spool_dir))
    assert first.counters.replayed == 1000 and Spool(spool_dir).segments() == []
    assert asyncio.run(count(fresh_db)) == 1000
    again = asyncio.run(recover(kept))
    assert again.counters.replayed == 1000 and again.counters.duplicates == 1000
    # The first replay went in by the direct COPY; the second met those rows on the primary key
    # and took the staging path, batch by batch.
    assert first.counters.staged_batches == 0 and again.counters.staged_batches >= 1
    assert asyncio.run(count(fresh_db)) == 1000  # the same spool twice: no new rows


def test_a_spool_from_before_scores_were_bytes_replays(fresh_db: str, tmp_path: Path) -> None:
    """Segments written by an older gateway hold scores as lists of floats; they replay into
    the same reals."""
    legacy = [[*row(i)[:11], [0.25, 0.75 + i / 1024], *row(i)[12:]] for i in range(50)]
    Spool(tmp_path).append(legacy)

    async def replay() -> list[list[float]]:
        await migrate(fresh_db)
        w = await drain_spool(fresh_db, tmp_path)
        assert w.counters.replayed == 50
        conn = await asyncpg.connect(fresh_db)
        try:
            rows = await conn.fetch("SELECT request_id, scores FROM predictions")
        finally:
            await conn.close()
        return [list(r["scores"]) for r in sorted(rows, key=lambda r: int(r[0].split("-")[1]))]

    assert asyncio.run(replay()) == [[0.25, 0.75 + i / 1024] for i in range(50)]
