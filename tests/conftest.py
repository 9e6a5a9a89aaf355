"""Shared fixtures: the real object graph (models made by converters/, a real gateway on a free
port, real stubs). Processes started here are always stopped by their fixture."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from abgate.addresses import free_port
from abgate.settings import GatewaySettings, load_settings
from abgate.v1 import gateway_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoStore:
    root: Path
    metas: dict[str, Any]  # model id -> ModelMetadata
    config: Path  # demo experiments config (TOML)
    X: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore
    from tests.numeric import session_options

    root = tmp_path_factory.mktemp("models")
    metas = train_demo_models(ModelStore(root), session_options=session_options())
    config = write_demo_config(root.parent / "demo-experiments.toml", metas)
    X, y = load_demo_holdout(root)
    return DemoStore(root, {m.id: m for m in metas}, config, X, y)


class InProcessGateway:
    """A real GatewayServer on its own event loop thread, for tests that need its internals."""

    def __init__(self, settings: GatewaySettings) -> None:
        from gateway.server import GatewayServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = GatewayServer(settings)
        self.port = self.call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.InferenceGatewayStub(self.channel)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        self.call(self.server.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def gateway_settings(
    demo_store: DemoStore, tmp_path: Path, database_url: str = "", **kw: Any
) -> GatewaySettings:
    """Settings for a test gateway; prediction logging is on when ``database_url`` is given.
    Only the onnxruntime settings come from the environment (``make test-numeric`` sets
    ABGATE_ORT_INTRA_OP_THREADS); everything else is explicit or the default."""
    from gateway.variants import SessionOptions

    explicit = {
        "listen": "127.0.0.1:0",
        "config": demo_store.config,
        "model_store": demo_store.root,
        "state_dir": tmp_path / "state",
        "watch_interval": 0.0,
        "log_predictions": bool(database_url),
        "database_url": database_url,
        "log_max_age": 0.05,
    }
    base = load_settings(GatewaySettings, explicit, fields=SessionOptions.SETTINGS)
    return replace(base, **kw)


@pytest.fixture
def gateway(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> Iterator[InProcessGateway]:
    """A gateway logging to a fresh database (``gateway.server.settings.database_url``)."""
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db))
    try:
        yield gw
    finally:
        gw.close()


class GatewayProcess:
    """``abgate serve`` as a real subprocess (for signals, restarts and workers)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.terminating = False

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        from abgate.demo import wait_serving

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abgate", "serve", "--listen", self.target, *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_serving(self.target, timeout=timeout, proc=self.proc)  # type: ignore[arg-type]
        except BaseException:
            self.proc.kill()  # never leave a half-started gateway behind a failed test
            self.proc.communicate()
            raise
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.terminating = self.terminating or sig == signal.SIGTERM

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM (unless already sent) and wait; returns (exit code, combined output)."""
        assert self.proc is not None
        if self.proc.poll() is None and not self.terminating:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


@pytest.fixture
def gateway_process(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> Iterator[Any]:
    """Factory: ``gateway_process(*extra_args)`` starts ``abgate serve`` logging to a fresh
    database (``gateway_process.database_url``); all are stopped at the end."""
    started: list[GatewayProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> GatewayProcess:
        args = [
            "--config",
            str(demo_store.config),
            "--model-store",
            str(demo_store.root),
            "--state-dir",
            str(tmp_path / "state"),
            "--database-url",
            fresh_db,
            "--log-max-age",
            "0.05",
            *extra,
        ]
        gp = GatewayProcess(args, env)
        started.append(gp)
        return gp.start()

    start.database_url = fresh_db  # type: ignore[attr-defined]
    yield start
    for gp in started:
        if gp.proc is not None and gp.proc.poll() is None:
            gp.stop()


# -- PostgreSQL: a real server, embedded by default or named by ABGATE_TEST_DATABASE_URL ------
@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("ABGATE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from abgate.db.embedded import EmbeddedPostgres

    with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as pg:
        yield pg.url


async def execute_sql(url: str, sql: str) -> None:
    """Run one statement on its own connection (database admin in tests)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def fresh_db(pg_url: str) -> Iterator[str]:
    """A new, empty database on the test server for one test; dropped afterwards."""
    import uuid

    name = f"abgate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute_sql(pg_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_url, name)
    finally:
        asyncio.run(execute_sql(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
