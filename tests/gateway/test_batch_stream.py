"""PredictBatchStream (issue #18, multi-row stream messages) through a real gateway and
PostgreSQL: each message is a PredictBatch with its answer in order, a bad message (one that
does not parse too) fails only itself, a repeated batch answers its original and is logged once,
abgate.client streams batches both ways, and a full log refuses a batch before its model
runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from abgate.client import AsyncClient, Batch, Client, RpcFailure
from abgate.surface import UNDECODABLE_MESSAGE
from abgate.v1 import gateway_pb2 as pb
from gateway.variants import Variant
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.gateway.test_request_ids import query, tensor
from tests.numeric import assert_scores_close

METHOD = "/abgate.v1.InferenceGateway/PredictBatchStream"


def batch(users: list[str], rows: np.ndarray, rids: list[str], exp: str = "demo") -> bytes:
    req = pb.PredictBatchRequest(experiment=exp, user_ids=users, features=tensor(rows),
                                 request_ids=rids)  # fmt: skip
    return req.SerializeToString()


def test_each_message_is_a_batch_answered_in_order_and_a_bad_one_fails_alone(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    first = batch(["u1", "u2", "u3"], X[:3], ["s1", "s2", "s3"])
    messages = [
        first,
        batch(["u4"], X[:1], ["s4"], exp="nope"),
        batch(["u5", "u6"], X[:2, :3], ["s5", "s6"]),  # too few features
        b"\xff\xff\xff",  # does not parse
        first,  # a retry of the first batch, whole
        batch(["u7", "u8"], X[3:5], ["s7", "s8"]),
    ]
    stream = gateway.channel.stream_stream(
        METHOD,
        request_serializer=lambda b: b,
        response_deserializer=pb.StreamPredictBatchResponse.FromString,
    )
    answers = list(stream(iter(messages), timeout=30))
    bad = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    missing = grpc.StatusCode.NOT_FOUND.value[0]
    assert [a.error_code for a in answers] == [0, missing, bad, bad, 0, 0]
    assert "features" in answers[2].error_message
    assert answers[3].error_message == UNDECODABLE_MESSAGE
    assert answers[4].response == answers[0].response  # the original answer
    assert list(answers[0].response.request_ids) == ["s1", "s2", "s3"]
    assert list(answers[5].response.request_ids) == ["s7", "s8"]
    # The same rows through PredictBatch: the same arms, labels and scores.
    unary = gateway.stub.PredictBatch(
        pb.PredictBatchRequest(
            experiment="demo", user_ids=["u1", "u2", "u3"], features=tensor(X[:3])
        ),
        timeout=10,
    )
    got = answers[0].response
    names = [got.arms[i].name for i in got.arm_index]
    assert names == [unary.arms[i].name for i in unary.arm_index]
    assert list(got.labels) == list(unary.labels)
    assert_scores_close(
        np.frombuffer(got.scores.raw, "<f4"), np.frombuffer(unary.scores.raw, "<f4")
    )
    # Logged once each (the retry too), nothing for the failed messages.
    url = gateway.server.settings.database_url
    logged: list[str] = []
    for _ in range(300):
        rows = asyncio.run(query(url, "SELECT request_id FROM predictions WHERE NOT shadow"))
        logged = sorted(r["request_id"] for r in rows if r["request_id"].startswith("s"))
        if len(logged) >= 5:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert logged == ["s1", "s2", "s3", "s7", "s8"]


def test_client_streams_batches_sync_and_async(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    batches = [([f"c{i}-{j}" for j in range(4)], X[4 * i : 4 * i + 4]) for i in range(3)]
    batches.insert(1, (["bad"], X[:1, :2]))
    with Client(gateway.target) as gw:
        got = list(gw.stream_batches("demo", batches, timeout=30))
    assert [type(g) for g in got] == [Batch, RpcFailure, Batch, Batch]
    failure = got[1]
    assert isinstance(failure, RpcFailure) and failure.code == grpc.StatusCode.INVALID_ARGUMENT
    for b, (users, _) in zip((got[0], *got[2:]), (batches[0], *batches[2:]), strict=True):
        assert isinstance(b, Batch)
        assert len(b.labels) == len(users) and b.scores.shape == (len(users), 2)
        assert len(set(b.request_ids)) == len(users)

    async def run() -> list[Batch | RpcFailure]:
        async with AsyncClient(gateway.target) as agw:
            return [b async for b in agw.stream_batches("demo", batches, timeout=30)]

    again = asyncio.run(run())
    assert [type(g) for g in again] == [Batch, RpcFailure, Batch, Batch]
    # Sticky: the same users get the same arms on both clients.
    assert again[0].arms == got[0].arms  # type: ignore[union-attr]


def test_a_full_log_refuses_a_batch_before_its_model_runs(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UNAVAILABLE comes before the model runs (the CPU the writer needs is not spent on rows
    that are then refused); a retry of an answered batch still gets its answer."""
    runs: list[int] = []
    real_run = Variant.run

    def counted(self: Variant, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        runs.append(len(rows))
        return real_run(self, rows)

    monkeypatch.setattr(Variant, "run", counted)
    # 50 rows fit; nothing is flushed for a minute, so the queue only grows.
    settings = gateway_settings(demo_store, tmp_path, fresh_db, log_max_queued_rows=50,
                                log_batch_rows=10_000, log_max_age=60.0)  # fmt: skip
    gw = InProcessGateway(settings)
    try:
        X = demo_store.X
        users = [f"f{i}" for i in range(40)]
        first = pb.PredictBatchRequest(experiment="demo", user_ids=users, features=tensor(X[:40]),
                                       request_ids=[f"full-{i}" for i in range(40)])  # fmt: skip
        answered = gw.stub.PredictBatch(first, timeout=10)
        ran = sum(runs)
        assert ran >= 40
        more = pb.PredictBatchRequest(experiment="demo", user_ids=users[:20],
                                      features=tensor(X[:20]))  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            gw.stub.PredictBatch(more, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "prediction log is full" in (err.value.details() or "")
        assert sum(runs) == ran  # refused before onnxruntime
        assert gw.stub.PredictBatch(first, timeout=10) == answered  # a retry: its answer
        stream = gw.channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=pb.StreamPredictBatchResponse.FromString,
        )
        fits = batch(users[:5], X[:5], [f"fits-{i}" for i in range(5)])
        answers = list(stream(iter([more.SerializeToString(), fits]), timeout=10))
        assert [a.error_code for a in answers] == [grpc.StatusCode.UNAVAILABLE.value[0], 0]
        assert sum(runs) == ran + 5
    finally:
        gw.close()
