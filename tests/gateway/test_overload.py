"""Overload through a real gateway process: a burst larger than ``--max-pending-calls`` (gRPC
core's queue of calls the event loop has not taken yet) is partly refused at once, every call
ends (none hangs in the backlog), nothing admitted is lost from the log, and the gateway keeps
answering afterwards. The same burst under the bound is served whole."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import grpc

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import DemoStore
from tests.gateway.test_undecodable import row_tensor


async def burst(target: str, n: int, features: pb.Tensor) -> Counter[str]:
    """``n`` Predict calls sent at once over 8 connections: how each ended."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    try:
        stubs = [pb_grpc.InferenceGatewayStub(ch) for ch in channels]

        async def one(i: int) -> str:
            request = pb.PredictRequest(experiment="demo", user_id=f"u{i}", features=features)
            try:
                await stubs[i % len(stubs)].Predict(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        return Counter(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for ch in channels:
            await ch.close()


async def logged_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM predictions WHERE NOT shadow"))
    finally:
        await conn.close()


def test_a_burst_over_the_pending_bound_is_refused_at_once(
    gateway_process: Any, demo_store: DemoStore
) -> None:
    features = row_tensor(demo_store)
    gw = gateway_process("--max-pending-calls", "8", "--log-max-age", "0.05")
    ended = asyncio.run(burst(gw.target, 1500, features))
    # Refused by gRPC core before any of the gateway's code: CANCELLED, nothing else.
    assert set(ended) == {"OK", "CANCELLED"}, ended
    assert ended["CANCELLED"] > 0 and ended["OK"] > 0
    # The gateway is still there, and serves a call at once.
    assert asyncio.run(burst(gw.target, 1, features)) == Counter({"OK": 1})
    gw.stop()
    # Every answered call has its row: refusals left none and lost none.
    assert asyncio.run(logged_rows(gateway_process.database_url)) == ended["OK"] + 1


def test_the_default_bound_serves_a_burst_of_a_few_hundred(
    gateway_process: Any, demo_store: DemoStore
) -> None:
    gw = gateway_process()
    ended = asyncio.run(burst(gw.target, 200, row_tensor(demo_store)))
    assert ended == Counter({"OK": 200})
