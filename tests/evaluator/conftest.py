"""Evaluator fixtures: a real EvaluatorServer on its own event loop thread, on a fresh
database of the real PostgreSQL test server, and an admin client holding its token."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from abgate.settings import EvaluatorSettings
from abgate.v1 import control_pb2 as cpb
from evaluator.cli import AdminClient

TOKEN = "test-token-5b1e"


class InProcessEvaluator:
    def __init__(self, settings: EvaluatorSettings) -> None:
        from evaluator.server import EvaluatorServer

        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = EvaluatorServer(settings)
        self.port = self.call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.admin = AdminClient(self.target, settings.token, ca=None)
        self.closed = False

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.admin.close()
        self.call(self.server.stop(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def evaluator_settings(database_url: str, **kw: Any) -> EvaluatorSettings:
    base = EvaluatorSettings(
        listen="127.0.0.1:0", token=TOKEN, database_url=database_url, tick_interval=0.2
    )
    return replace(base, **kw)


@pytest.fixture
def evaluator(fresh_db: str) -> Iterator[InProcessEvaluator]:
    ev = InProcessEvaluator(evaluator_settings(fresh_db))
    try:
        yield ev
    finally:
        ev.close()


def ab_definition(
    name: str, control: str, treatment: str, weights: tuple[float, float] = (50.0, 50.0), **kw: Any
) -> cpb.ExperimentDefinition:
    return cpb.ExperimentDefinition(
        name=name,
        kind=kw.pop("kind", cpb.AB),
        arms=[
            cpb.ArmConfig(name="control", model=control, weight=weights[0]),
            cpb.ArmConfig(name="treatment", model=treatment, weight=weights[1]),
        ],
        **kw,
    )


def rpc_code(fn: Any, *args: Any, **kw: Any) -> grpc.StatusCode:
    """The status code a call fails with (the test fails if it succeeds)."""
    try:
        fn(*args, **kw)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded")


def gateway_args(evaluator: InProcessEvaluator, store: Path, state: Path) -> list[str]:
    """``abgate serve`` flags for a gateway fed by ``evaluator`` (no config file, no log DB)."""
    return [
        "--model-store",
        str(store),
        "--state-dir",
        str(state),
        "--evaluator",
        evaluator.target,
        "--evaluator-token",
        evaluator.settings.token,
        "--no-log-predictions",
    ]
