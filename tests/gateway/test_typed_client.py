"""The typed client (abgate.client.Client / AsyncClient) against a real gateway, and its retry
rule against a gRPC server that fails on purpose: UNAVAILABLE is retried with the same request
id inside the call's deadline; any other status is raised at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from abgate.client import AsyncClient, Client, GatewayClient, Prediction, RpcFailure
from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import DemoStore, InProcessGateway
from tests.evaluator.conftest import fetch


def test_predict_batch_stream_and_outcomes(
    gateway: InProcessGateway, demo_store: DemoStore, fresh_db: str
) -> None:
    X = demo_store.X
    with Client(gateway.target, timeout=5.0) as gw, GatewayClient(gateway.target) as old:
        p = gw.predict("demo", "user-1", X[0])
        assert isinstance(p, Prediction) and p.scores.dtype == np.float32
        want = old.predict("demo", "user-1", X[0])
        assert (p.arm, p.label, p.bucket) == (want["arm"], want["label"], want["bucket"])
        np.testing.assert_allclose(p.scores, want["scores"], rtol=1e-6)
        assert len(p.request_id) == 32  # generated here, so a retry can reuse it
        again = gw.predict("demo", "user-1", X[0], request_id=p.request_id)
        # the first answer again, not a second prediction
        assert (again.request_id, again.arm, again.label) == (p.request_id, p.arm, p.label)
        assert np.array_equal(again.scores, p.scores)
        batch = gw.predict_batch("demo", [f"u{i}" for i in range(20)], X[:20])
        assert batch.labels.shape == (20,) and batch.scores.shape[0] == 20
        assert len(batch.arms) == 20 and len(set(batch.request_ids)) == 20
        rows = [(f"s{i}", X[i]) for i in range(5)]
        rows.insert(2, ("bad", X[0][:3]))  # wrong width: that message fails, the stream goes on
        answers = list(gw.stream("demo", rows))
        assert [type(a).__name__ for a in answers] == ["Prediction"] * 2 + ["RpcFailure"] + [
            "Prediction"
        ] * 3
        bad = answers[2]
        assert isinstance(bad, RpcFailure) and bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert gw.record_outcome(p.request_id, 1.0, source="clicks") == 1
        with pytest.raises(RpcFailure) as info:
            gw.predict("nope", "u", X[0])
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="one row"):
            gw.predict("demo", "u", X[:2])
    # The repeated request id is one prediction in the log.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows_ = fetch(fresh_db, "SELECT count(*) AS n FROM predictions WHERE request_id = $1",
                      p.request_id)  # fmt: skip
        if rows_[0]["n"]:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert fetch(fresh_db, "SELECT count(*) AS n FROM predictions WHERE request_id = $1",
                 p.request_id)[0]["n"] == 1  # fmt: skip


def test_the_async_client(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    X = demo_store.X

    async def run() -> tuple[Prediction, Any, list[Any], int]:
        async with AsyncClient(gateway.target, timeout=5.0) as gw:
            p = await gw.predict("demo", "user-1", X[0])
            batch = await gw.predict_batch("demo", ["a", "b", "c"], X[:3])
            streamed = [a async for a in gw.stream("demo", [("x", X[1]), ("y", X[2])])]
            n = await gw.record_outcomes([(p.request_id, 0.0, "labels")])
            return p, batch, streamed, n

    p, batch, streamed, n = asyncio.run(run())
    with Client(gateway.target, timeout=5.0) as sync:
        q = sync.predict("demo", "user-1", X[0])
    assert (p.arm, p.label) == (q.arm, q.label)
    assert batch.scores.shape[0] == 3 and len(streamed) == 2 and n == 1
    assert all(isinstance(a, Prediction) for a in streamed)


class _Flaky(pb_grpc.InferenceGatewayServicer):
    """Fails the first ``failures`` Predict calls with ``code``, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode) -> None:
        self.failures, self.code = failures, code
        self.seen: list[str] = []

    def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        self.seen.append(request.request_id)
        if len(self.seen) <= self.failures:
            context.abort(self.code, "not now")
        return pb.PredictResponse(request_id=request.request_id, experiment=request.experiment,
                                  arm="control", label=1, scores=[0.2, 0.8])  # fmt: skip


@pytest.fixture
def flaky() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(failures: int, code: grpc.StatusCode) -> tuple[str, _Flaky]:
        servicer = _Flaky(failures, code)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_InferenceGatewayServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield start
    for s in servers:
        s.stop(0)


def test_unavailable_is_retried_with_the_same_request_id(flaky: Any) -> None:
    target, servicer = flaky(2, grpc.StatusCode.UNAVAILABLE)
    with Client(target, timeout=5.0) as gw:
        p = gw.predict("demo", "u", [1.0, 2.0])
    assert (
        len(servicer.seen) == 3
        and len(set(servicer.seen)) == 1
        and p.request_id == servicer.seen[0]
    )

    async def run() -> Prediction:
        async with AsyncClient(target2, timeout=5.0) as gw:
            return await gw.predict("demo", "u", [1.0])

    target2, servicer2 = flaky(1, grpc.StatusCode.UNAVAILABLE)
    assert asyncio.run(run()).request_id == servicer2.seen[0] and len(servicer2.seen) == 2


def test_other_statuses_and_exhausted_retries_are_raised(flaky: Any) -> None:
    target, servicer = flaky(5, grpc.StatusCode.INVALID_ARGUMENT)
    with Client(target, timeout=5.0) as gw, pytest.raises(RpcFailure) as info:
        gw.predict("demo", "u", [1.0])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(servicer.seen) == 1
    target, servicer = flaky(10, grpc.StatusCode.UNAVAILABLE)
    with Client(target, timeout=5.0, retries=3) as gw, pytest.raises(RpcFailure) as info:
        gw.predict("demo", "u", [1.0])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(servicer.seen) == 4
    # Nothing listening: UNAVAILABLE within the call's deadline, retries included.
    started = time.monotonic()
    with Client("127.0.0.1:1", timeout=0.5) as gw, pytest.raises(RpcFailure) as info:
        gw.predict("demo", "u", [1.0])
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 2.0
