"""Prediction logs end to end: real gRPC server, real PostgreSQL, exact row accounting."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import threading
import time
from typing import Any

import asyncpg
import numpy as np

from abgate.client import GatewayClient, RpcFailure
from abgate.v1 import gateway_pb2 as pb
from tests.conftest import DemoStore, InProcessGateway


async def logged_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id FROM predictions WHERE NOT shadow")
        return [r["request_id"] for r in rows]
    finally:
        await conn.close()


async def fetch(url: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def wait_for_rows(url: str, n: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = asyncio.run(logged_ids(url))
        if len(ids) >= n or time.monotonic() > deadline:
            return ids
        time.sleep(0.1)


def test_50000_predictions_make_exactly_their_rows(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    ok_ids: list[str] = []
    for chunk in range(9):
        users = [f"u-{chunk}-{i}" for i in range(5000)]
        rows = X[np.arange(5000) % len(X)]
        raw = np.ascontiguousarray(rows, dtype="<f4")
        resp = gateway.stub.PredictBatch(
            pb.PredictBatchRequest(experiment="demo", user_ids=users,
                                   features=pb.Tensor(shape=list(raw.shape), raw=raw.tobytes())),
            timeout=60,
        )  # fmt: skip
        ok_ids.extend(resp.request_ids)
    with GatewayClient(gateway.target) as client:
        for i in range(5000):
            ok_ids.append(client.predict("demo", f"single-{i}", X[i % len(X)])["request_id"])
    assert len(ok_ids) == 50_000 == len(set(ok_ids))
    url = gateway.server.settings.database_url
    logged = wait_for_rows(url, 50_000)
    assert len(logged) == 50_000
    assert set(logged) == set(ok_ids)
    w = gateway.server.logwriter
    assert w is not None and w.counters.written == 50_000 and w.counters.refused == 0
    # The gateway prepared today's daily partition when it connected: rows land there.
    today = dt.datetime.now(dt.UTC).date()
    where = asyncio.run(
        fetch(url, "SELECT DISTINCT tableoid::regclass::text AS p FROM predictions")
    )
    assert {r["p"] for r in where} <= {
        f"predictions_{today:%Y%m%d}",
        f"predictions_{today + dt.timedelta(days=1):%Y%m%d}",
    }


def test_every_ok_answer_is_logged_after_sigterm(
    gateway_process: Any, demo_store: DemoStore
) -> None:
    gp = gateway_process()
    row = demo_store.X[0]
    ok: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        with GatewayClient(gp.target, timeout=10) as client:
            i = 0
            while not stop.is_set():
                try:
                    ok.append(client.predict("demo", f"w{worker}-{i}", row)["request_id"])
                except RpcFailure as exc:
                    failures.append(exc.code.name)
                    if len(failures) > 50:
                        return
                i += 1

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    gp.signal(signal.SIGTERM)
    rc, out = gp.stop()
    stop.set()
    for t in threads:
        t.join(30)
    assert rc == 0, out
    assert len(ok) > 100
    logged = set(asyncio.run(logged_ids(gateway_process.database_url)))
    assert set(ok) <= logged, f"{len(set(ok) - logged)} answered calls have no log row"
    # Calls refused while draining never got an answer, so they need no row.
    assert set(failures) <= {"UNAVAILABLE", "CANCELLED"}


async def fetch_outcomes(url: str) -> dict[tuple[str, str], float]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id, source, value FROM outcomes")
        return {(r["request_id"], r["source"]): r["value"] for r in rows}
    finally:
        await conn.close()


def test_outcomes_attach_by_request_id(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    url = gateway.server.settings.database_url
    with GatewayClient(gateway.target) as client:
        rid = client.predict("demo", "alice", demo_store.X[0])["request_id"]
        wait_for_rows(url, 1)
        assert (
            client.record_outcomes([(rid, 1.0, "labels"), ("not-yet-logged", 0.0, "labels")]) == 2
        )
        assert client.record_outcomes([(rid, 0.0, "labels")]) == 1  # duplicate: first one wins
        for bad, field in (
            (("", 1.0, "s"), "outcomes[0].request_id"),
            (("r", float("nan"), "s"), "outcomes[0].value"),
            (("r", 1.0, "s" * 65), "outcomes[0].source"),
        ):
            try:
                client.record_outcomes([bad])
                raise AssertionError("accepted a bad outcome")
            except RpcFailure as exc:
                assert exc.code.name == "INVALID_ARGUMENT" and field in exc.details
    writer = gateway.server.outcome_writer
    assert writer is not None
    deadline = time.monotonic() + 10
    while writer.counters.written + writer.counters.duplicates < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = asyncio.run(fetch_outcomes(url))
    assert stored == {(rid, "labels"): 1.0, ("not-yet-logged", "labels"): 0.0}
    assert writer.counters.unmatched == 1 and writer.counters.duplicates == 1


def test_outcome_cli(gateway_process: Any, demo_store: DemoStore) -> None:
    import json
    import subprocess
    import sys

    gp = gateway_process()
    with GatewayClient(gp.target) as client:
        rid = client.predict("demo", "bob", demo_store.X[1])["request_id"]
    base = [sys.executable, "-m", "abgate", "outcome", "--target", gp.target]
    ok = subprocess.run([*base, "--request-id", rid, "--value", "1", "--json"],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"accepted": 1}
    mismatch = subprocess.run([*base, "--request-id", rid], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    assert mismatch.returncode == 2
    bad = subprocess.run([*base, "--request-id", rid, "--value", "nan"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    rc, out = gp.stop()
    assert rc == 0, out
    assert asyncio.run(fetch_outcomes(gateway_process.database_url)) == {(rid, ""): 1.0}


def test_metrics_endpoint_reports_the_log(
    demo_store: DemoStore, tmp_path: Any, fresh_db: str
) -> None:
    import urllib.request

    from tests.conftest import gateway_settings

    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, fresh_db, metrics_listen="127.0.0.1:0")
    )
    try:
        arms: dict[str, int] = {}
        unsure: dict[str, int] = {}  # answers whose highest class score is at most 0.6
        with GatewayClient(gw.target) as client:
            for i in range(25):
                answer = client.predict("demo", f"m{i}", demo_store.X[i])
                arm = answer["arm"]
                arms[arm] = arms.get(arm, 0) + 1
                unsure[arm] = unsure.get(arm, 0) + (max(answer["scores"]) <= 0.6)
        wait_for_rows(fresh_db, 25)
        url = f"http://127.0.0.1:{gw.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        gw.close()
    gid = gw.server.gateway_id
    # Requests by experiment/arm/status and their latency, counted from the log rows.
    for arm, n in arms.items():
        labels = f'arm="{arm}",experiment="demo",gateway="{gid}"'
        assert f'abgate_predictions_total{{{labels},shadow="false",status="OK"}} {float(n)}' in text
        ok = 'shadow="false",status="OK"'
        assert f"abgate_prediction_latency_seconds_count{{{labels},{ok}}} {float(n)}" in text
        assert f'abgate_prediction_latency_seconds_bucket{{{labels},le="+Inf",{ok}}}' in text
        # Confidence (highest class score) of the same answers.
        assert f'abgate_prediction_confidence_count{{{labels},shadow="false"}} {float(n)}' in text
        le_06 = f'abgate_prediction_confidence_bucket{{{labels},le="0.6",shadow="false"}}'
        assert f"{le_06} {float(unsure[arm])}" in text, (le_06, unsure)
    assert f'abgate_log_rows_written_total{{gateway="{gid}",table="predictions"}} 25.0' in text
    assert f'abgate_log_rows_queued{{gateway="{gid}",table="predictions"}} 0.0' in text
    assert f'abgate_config_version{{gateway="{gid}"}} 1.0' in text
    assert "abgate_log_lag_seconds" in text and "abgate_outcomes_unmatched_total" in text
    assert f'abgate_log_rows_spooled_total{{gateway="{gid}",table="predictions"}} 0.0' in text
    # Fresh rows went in by the direct COPY: no batch needed the staging path.
    assert f'abgate_log_staged_batches_total{{gateway="{gid}",table="predictions"}} 0.0' in text
    assert "abgate_log_spool_bytes" in text
    spool_max = re.search(
        rf'^abgate_log_spool_max_bytes{{gateway="{gid}",table="predictions"}} (\S+)$', text, re.M
    )
    assert spool_max is not None
    assert float(spool_max.group(1)) == gw.server.settings.spool_max_bytes
