"""The prediction log when PostgreSQL goes away, and when the gateway is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from abgate.client import GatewayClient, RpcFailure
from abgate.db.embedded import EmbeddedPostgres
from gateway.spool import Spool
from gateway.wal import WAL_DIR
from tests.conftest import DemoStore, InProcessGateway, gateway_settings

pytestmark = pytest.mark.slow


async def ids_and_count(url: str) -> tuple[set[str], int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id FROM predictions")
        return {r["request_id"] for r in rows}, len(rows)
    finally:
        await conn.close()


Call = Callable[[GatewayClient, str], str]  # one call for a caller's key; the id to check


def predict_call(row: Any) -> Call:
    """Predict for user ``key``; the answer's request id."""
    return lambda client, key: str(client.predict("demo", f"user-{key}", row)["request_id"])


def outcome_call(client: GatewayClient, key: str) -> str:
    """RecordOutcome of one outcome (request id ``outcome-<key>``, value from the key)."""
    request_id = f"outcome-{key}"
    accepted = client.record_outcomes([(request_id, outcome_value(request_id), "kill9")])
    assert accepted == 1
    return request_id


def outcome_value(request_id: str) -> float:
    return float(request_id.rsplit("-", 1)[1]) / 8


def traffic(target: str, call: Call, stop: threading.Event, ok: list[str], errors: list[str],
            pause: float = 0.0) -> None:  # fmt: skip
    with GatewayClient(target, timeout=10) as client:
        i = 0
        while not stop.is_set():
            try:
                ok.append(call(client, f"{threading.get_ident()}-{i}"))
            except RpcFailure as exc:
                errors.append(exc.code.name)
            i += 1
            if pause:
                time.sleep(pause)


def test_postgres_down_for_30s_loses_nothing(demo_store: DemoStore, tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, url, log_batch_rows=200))
    ok: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    call = predict_call(demo_store.X[0])
    t = threading.Thread(target=traffic, args=(gw.target, call, stop, ok, errors, 0.002))
    t.start()
    try:
        time.sleep(1.0)
        pg.stop()  # the database is gone; traffic goes on
        before_outage = len(ok)
        time.sleep(30)
        during = len(ok) - before_outage
        writer = gw.server.logwriter
        assert writer is not None and writer.queued > 0 and writer.counters.failed_flushes > 0
        pg.start()  # same data directory, same socket: the writer reconnects by itself
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
        gw.close()  # drains, then flushes everything still queued
    try:
        ids, n = asyncio.run(ids_and_count(url))
    finally:
        pg.stop()
    assert errors == [], "no client may see an error while the database is down"
    assert during > 1000
    assert n == len(ids) == len(ok) and ids == set(ok)


def kill_9_under_traffic(gp: Any, call: Call, seconds: float) -> list[str]:
    """Three clients make ``call`` to the gateway for ``seconds``, then it is killed with
    SIGKILL: the ids of the calls answered before the kill (a few in-flight calls fail)."""
    ok: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=traffic, args=(gp.target, call, stop, ok, errors)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    assert gp.proc is not None
    os.kill(gp.proc.pid, signal.SIGKILL)
    answered = list(ok)
    stop.set()
    for t in threads:
        t.join(30)
    gp.proc.wait(10)
    return answered


def test_kill_9_loses_at_most_one_flush_window(gateway_process: Any, demo_store: DemoStore) -> None:
    """kill -9 loses what was queued or mid-COPY: at most about two flush windows of rows."""
    batch_rows = 200
    gp = gateway_process("--log-batch-rows", str(batch_rows), "--log-max-age", "0.2")
    ok = kill_9_under_traffic(gp, predict_call(demo_store.X[0]), 3.0)
    answered = len(ok)
    ids, _ = asyncio.run(ids_and_count(gateway_process.database_url))
    missing = len(set(ok[:answered]) - ids)
    rate = answered / 3.0
    print(f"kill -9: {answered} answered at {rate:.0f}/s, {missing} without a log row")
    # Window: rows younger than --log-max-age plus one batch being copied.
    assert missing <= max(2 * batch_rows, int(rate * 0.2) + batch_rows)


def test_kill_9_in_local_mode_loses_no_answered_row(
    gateway_process: Any, demo_store: DemoStore
) -> None:
    """--log-durability local: every answer given before kill -9 is in PostgreSQL exactly once
    after a restart on the same state directory (the write-ahead log replayed, idempotently)."""
    args = ("--log-durability", "local", "--log-batch-rows", "200", "--log-max-age", "0.2")
    gp = gateway_process(*args)
    answered = kill_9_under_traffic(gp, predict_call(demo_store.X[0]), 2.0)
    gateway_process(*args)  # same state dir: replays the local log
    deadline = time.monotonic() + 10
    while True:
        ids, n = asyncio.run(ids_and_count(gateway_process.database_url))
        if set(answered) <= ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(answered) > 100
    assert set(answered) <= ids, f"{len(set(answered) - ids)} answered rows lost"
    assert n == len(ids), "a replayed row was stored twice"


async def outcome_rows(url: str) -> list[tuple[str, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id, value FROM outcomes WHERE source = 'kill9'")
        return [(r["request_id"], r["value"]) for r in rows]
    finally:
        await conn.close()


def test_kill_9_in_local_mode_loses_no_answered_outcome(
    gateway_process: Any, tmp_path: Path
) -> None:
    """--log-durability local covers outcomes as it does predictions (their own log writer and
    write-ahead log): every RecordOutcome answered OK before kill -9 is in PostgreSQL after a
    restart on the same state directory, exactly once, with its value."""
    args = ("--log-durability", "local", "--log-batch-rows", "200", "--log-max-age", "0.2")
    gp = gateway_process(*args)
    answered = kill_9_under_traffic(gp, outcome_call, 2.0)
    # Before the restart: what is not in PostgreSQL yet is in the write-ahead log left behind.
    before = {r for r, _ in asyncio.run(outcome_rows(gateway_process.database_url))}
    wal = Spool(tmp_path / "state" / "spool" / "main" / "outcomes" / WAL_DIR)
    left = {row[0] for seg in wal.segments() for batch in wal.read(seg) for row in batch}
    assert set(answered) <= before | left
    print(f"kill -9: {len(answered)} outcomes answered, {len(set(answered) - before)} only in wal/")
    gateway_process(*args)  # same state dir: replays the outcomes' local log
    deadline = time.monotonic() + 10
    while True:
        rows = asyncio.run(outcome_rows(gateway_process.database_url))
        stored = {request_id for request_id, _ in rows}
        if set(answered) <= stored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(answered) > 100
    assert len(set(answered)) == len(answered)
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered outcomes lost"
    counts = Counter(request_id for request_id, _ in rows)
    assert max(counts.values()) == 1, "an outcome was stored twice"
    for request_id, value in rows:
        assert value == pytest.approx(outcome_value(request_id), abs=1e-12)


def test_local_mode_serves_on_after_a_caller_gives_up_waiting_for_its_group(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    """A call cancelled while it waits for its group's fsync (here its deadline passes during
    a 0.5 s sync interval; in production a client goes away) once cancelled the group's shared
    future, which then ended the local log's task: no later answer in local mode ever left
    (found by benchmarks/bench_durability: 0 req/s after the first h2load run ended)."""
    settings = gateway_settings(
        demo_store, tmp_path, fresh_db, log_durability="local", log_sync_interval=0.5
    )
    gw = InProcessGateway(settings)
    try:
        with (
            GatewayClient(gw.target, timeout=0.1) as impatient,
            pytest.raises(RpcFailure) as failed,
        ):
            impatient.predict("demo", "user-gone", demo_store.X[0])
        assert failed.value.code.name == "DEADLINE_EXCEEDED"
        with GatewayClient(gw.target, timeout=10) as client:
            answered = [client.predict("demo", f"user-{i}", demo_store.X[0]) for i in range(3)]
            assert client.record_outcomes([(answered[0]["request_id"], 1.0, "")]) == 1
        writer = gw.server.logwriter
        assert writer is not None and writer.local is not None
        assert writer.local.rows_written >= 4  # the cancelled call's row, then three more
    finally:
        gw.close()
