"""Request ids and client identities through a real gateway and PostgreSQL: generated ids are
unguessable, a repeated id answers its original prediction and is logged once, an outcome for a
duplicated id counts once in the evaluator's aggregates, and with client tokens a call needs a
valid one and an outcome counts only from the client that asked (issue #15, items 2 and 3)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.client import GatewayClient
from abgate.v1 import gateway_pb2 as pb
from evaluator.aggregate import aggregate, arm_totals
from tests.conftest import DemoStore, InProcessGateway, gateway_settings


def tensor(row: np.ndarray) -> pb.Tensor:
    arr = np.ascontiguousarray(row, dtype="<f4")
    return pb.Tensor(shape=list(arr.shape), raw=arr.tobytes(), datatype="FP32")


def request(user: str, row: np.ndarray, rid: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(experiment="demo", user_id=user, features=tensor(row), request_id=rid)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def answer(r: pb.PredictResponse) -> tuple[Any, ...]:
    return (r.request_id, r.arm, r.model.sha256, r.label, tuple(r.scores), r.bucket,
            r.config_version)  # fmt: skip


async def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def wait_rows(url: str, table: str, n: int, timeout: float = 30.0) -> list[asyncpg.Record]:
    """The rows of ``table`` once it holds at least ``n`` (predictions: served rows only)."""
    where = " WHERE NOT shadow" if table == "predictions" else ""
    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(query(url, f"SELECT * FROM {table}{where}"))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def tick(url: str) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
    """One evaluator aggregation pass over everything logged: per-arm totals and what it left
    out (``ignored_rows``; read by SQL so that this test needs nothing else of the fix)."""

    async def run() -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
        conn = await asyncpg.connect(url)
        try:
            await aggregate(conn, settle=0.0, now=time.time() + 5)
            totals = await arm_totals(conn, "demo")
            ignored = await conn.fetch("SELECT experiment, reason, n FROM ignored_rows")
            return totals, {(r["experiment"], r["reason"]): int(r["n"]) for r in ignored}
        finally:
            await conn.close()

    return asyncio.run(run())


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_generated_request_ids_are_random_128_bit(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    ids = [gateway.stub.Predict(request(f"u{i}", X[i % len(X)]), timeout=10).request_id
           for i in range(500)]  # fmt: skip
    rows = X[np.arange(500) % len(X)]
    batch = gateway.stub.PredictBatch(
        pb.PredictBatchRequest(experiment="demo", user_ids=[f"b{i}" for i in range(500)],
                               features=tensor(rows)),
        timeout=30,
    )  # fmt: skip
    ids += list(batch.request_ids)
    assert len(ids) == len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids), ids[:3]
    # 1,000 random 128-bit ids: the longest prefix two of them share is ~5 hex digits (10 or
    # more has probability ~5e-7). A per-process prefix with a counter shares all but the end.
    ordered = sorted(ids)
    assert max(common_prefix(a, b) for a, b in itertools.pairwise(ordered)) < 10
    # Every hex digit about as often in every position: 62.5 expected of each in 1,000 ids
    # (130 or more: p < 1e-12); a fixed digit shows up 1,000 times.
    for pos in (0, 15, 31):
        counts = Counter(rid[pos] for rid in ids)
        assert len(counts) == 16 and max(counts.values()) < 130, (pos, counts)


def test_a_repeated_request_id_answers_the_original_and_is_logged_once(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    stub = gateway.stub
    first = stub.Predict(request("alice", X[0], "retry-1"), timeout=10)
    # A retry (even with other features: the id names the request) gets the original answer.
    for row in (X[0], X[7]):
        assert answer(stub.Predict(request("alice", row, "retry-1"), timeout=10)) == answer(first)
    # Inside one stream too.
    streamed = list(stub.PredictStream(iter([request("bob", X[1], "retry-2")] * 3), timeout=10))
    assert [a.error_code for a in streamed] == [0, 0, 0]
    assert len({answer(a.response) for a in streamed}) == 1
    # The same id for another request (another user) is refused, naming the field.
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request("mallory", X[0], "retry-1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details().startswith("request_id: ")
    # A batch retried whole gets its original answer; any other overlap is refused.
    rows = X[:3]
    req = pb.PredictBatchRequest(experiment="demo", user_ids=["c1", "c2", "c3"],
                                 features=tensor(rows), request_ids=["b1", "b2", "b3"])  # fmt: skip
    assert stub.PredictBatch(req, timeout=10) == stub.PredictBatch(req, timeout=10)
    overlap = pb.PredictBatchRequest(experiment="demo", user_ids=["c4", "c3"],
                                     features=tensor(X[3:5]), request_ids=["b4", "b3"])  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictBatch(overlap, timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details().startswith("request_ids[1]: ")
    url = gateway.server.settings.database_url
    wait_rows(url, "predictions", 5)
    time.sleep(0.2)  # a second row of any of them would have been flushed by now
    logged = wait_rows(url, "predictions", 5)
    assert sorted(r["request_id"] for r in logged) == ["b1", "b2", "b3", "retry-1", "retry-2"]
    assert gateway.server.dataplane.recent.repeats == 5


def test_an_outcome_for_a_duplicated_id_counts_once(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X, stub = demo_store.X, gateway.stub
    url = gateway.server.settings.database_url
    with GatewayClient(gateway.target) as client:
        for i in range(4):
            stub.Predict(request(f"user-{i}", X[i], f"once-{i}"), timeout=10)
        stub.Predict(request("user-0", X[0], "once-0"), timeout=10)  # answered from memory
        wait_rows(url, "predictions", 4)
        # Another worker process (or gateway) has its own memory: there the id is new, and
        # the log gets a second row for it.
        from gateway.idempotency import RecentRequests

        gateway.server.dataplane.recent = RecentRequests()
        stub.Predict(request("user-0", X[0], "once-0"), timeout=10)
        assert client.record_outcomes([(f"once-{i}", 1.0, "labels") for i in range(4)]) == 4
        wait_rows(url, "predictions", 5)
        wait_rows(url, "outcomes", 4)
    logged = Counter(r["request_id"] for r in asyncio.run(query(url, "SELECT * FROM predictions")))
    assert logged == {"once-0": 2, "once-1": 1, "once-2": 1, "once-3": 1}
    totals, ignored = tick(url)
    assert sum(t.served for t in totals.values()) == 4  # request ids, not log rows
    assert sum(t.outcome_n for t in totals.values()) == 4
    assert sum(t.outcome_sum for t in totals.values()) == 4.0
    assert ignored == {("demo", "duplicate_prediction"): 1}


# -- client identities ----------------------------------------------------------------------------
ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "clients.toml"
    path.write_text(f'[clients]\ncheckout = "{ALICE}"\nfraud-scorer = "{BOB}"\n')
    return path


def test_with_client_tokens_a_call_needs_one_and_outcomes_count_only_from_their_client(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, tokens_file: Path
) -> None:
    X = demo_store.X
    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, fresh_db, client_tokens_file=tokens_file)
    )
    try:
        stub = gw.stub
        for metadata in (None, bearer("not-a-token-of-anyone"), [("authorization", ALICE)]):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request("alice", X[0]), metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            outcome = pb.RecordOutcomeRequest(outcomes=[pb.Outcome(request_id="x", value=1.0)])
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordOutcome(outcome, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers.
        health = health_pb2_grpc.HealthStub(gw.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        with GatewayClient(gw.target, token=ALICE) as alice, \
                GatewayClient(gw.target, token=BOB) as bob:  # fmt: skip
            rid = alice.predict("demo", "u1", X[0], "order-1")["request_id"]
            # Bob may neither record the outcome of Alice's recent prediction...
            with pytest.raises(Exception) as refused:
                bob.record_outcomes([("order-1", 0.0, "labels")])
            assert str(refused.value).startswith("PERMISSION_DENIED: outcomes[0].request_id: ")
            # ... nor reuse her request id to see her answer.
            with pytest.raises(Exception) as reused:
                bob.predict("demo", "u1", X[0], "order-1")
            assert str(reused.value).startswith("ALREADY_EXISTS: request_id: ")
            # Guessing an id before it is used gets Bob's outcome stored, but it does not count
            # and does not take the place of Alice's true one.
            assert bob.record_outcomes([("order-2", 0.0, "labels")]) == 1
            alice.predict("demo", "u2", X[1], "order-2")
            assert alice.record_outcomes([(rid, 1.0, "labels"), ("order-2", 1.0, "labels")]) == 2
            bob_rid = bob.predict("demo", "u3", X[2])["request_id"]
            assert bob.record_outcomes([(bob_rid, 1.0, "labels")]) == 1
        url = gw.server.settings.database_url
        preds = wait_rows(url, "predictions", 3)
        assert {r["request_id"]: r["client_identity"] for r in preds} == {
            "order-1": "checkout", "order-2": "checkout", bob_rid: "fraud-scorer"}  # fmt: skip
        outs = wait_rows(url, "outcomes", 4)
        assert sorted((r["request_id"], r["client_identity"], r["value"]) for r in outs) == [
            (bob_rid, "fraud-scorer", 1.0), ("order-1", "checkout", 1.0),
            ("order-2", "checkout", 1.0), ("order-2", "fraud-scorer", 0.0)]  # fmt: skip
        totals, ignored = tick(url)
        assert sum(t.outcome_n for t in totals.values()) == 3
        assert sum(t.outcome_sum for t in totals.values()) == 3.0  # Bob's 0.0 left out
        assert ignored == {("demo", "foreign_outcome"): 1}
    finally:
        gw.close()


def test_cross_identity_outcomes_count_when_allowed(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, tokens_file: Path
) -> None:
    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, fresh_db, client_tokens_file=tokens_file,
                         allow_cross_identity_outcomes=True)
    )  # fmt: skip
    try:
        with GatewayClient(gw.target, token=ALICE) as alice, \
                GatewayClient(gw.target, token=BOB) as labeller:  # fmt: skip
            rid = alice.predict("demo", "u1", demo_store.X[0])["request_id"]
            assert labeller.record_outcomes([(rid, 1.0, "labels")]) == 1
            assert alice.record_outcomes([(rid, 0.0, "labels")]) == 1  # stored, not counted
        url = gw.server.settings.database_url
        wait_rows(url, "predictions", 1)
        wait_rows(url, "outcomes", 2)
        totals, ignored = tick(url)
        assert sum(t.outcome_n for t in totals.values()) == 1
        assert sum(t.outcome_sum for t in totals.values()) == 1.0  # the first, the labeller's
        assert ignored == {("demo", "duplicate_outcome"): 1}
    finally:
        gw.close()
