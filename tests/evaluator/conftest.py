"""Evaluator fixtures: a real EvaluatorServer on its own event loop thread, on a fresh
database of the real PostgreSQL test server, and an admin client holding its token; and
``decided``, a database holding an experiment run through to its promotion, which the tests of
``evaluator.results`` and of ``abgate report`` read."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest

from abgate.client import GatewayClient, RpcFailure
from abgate.settings import EvaluatorSettings
from abgate.v1 import control_pb2 as cpb
from evaluator.aggregate import ArmTotals, arm_totals
from evaluator.cli import AdminClient
from tests.conftest import (
    DemoStore,
    InProcessGateway,
    execute_sql,
    gateway_settings,
    with_database,
)
from tests.evaluator.onnx_models import constant_model, register

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


def evaluator_settings(database_url: str, model_store: Path, **kw: Any) -> EvaluatorSettings:
    """An evaluator on a free port resolving experiments' models in ``model_store``."""
    base = EvaluatorSettings(
        listen="127.0.0.1:0",
        token=TOKEN,
        database_url=database_url,
        model_store=model_store,
        tick_interval=0.2,
    )
    return replace(base, **kw)


@pytest.fixture
def evaluator(fresh_db: str, demo_store: DemoStore) -> Iterator[InProcessEvaluator]:
    """An evaluator whose model store is the demo store."""
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root))
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


def monitoring_evaluator(demo_store: DemoStore, fresh_db: str, **kw: Any) -> InProcessEvaluator:
    """An evaluator that ticks only when a test says (``settle`` 0), running experiment "exp":
    control demo-logreg vs treatment demo-gbdt; ``kw``: more settings."""
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    settings = {"settle": 0.0, "tick_interval": 3600, **kw}
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root, **settings))
    try:
        definition = ab_definition("exp", shas["demo-logreg"], shas["demo-gbdt"])
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
    except BaseException:
        ev.close()
        raise
    return ev


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


# -- an experiment run through to its promotion -------------------------------------------
@dataclass(frozen=True)
class Decided:
    url: str
    totals: dict[str, ArmTotals]  # the evaluator's own aggregates after the last tick


def _traffic(gw: InProcessGateway, store: DemoStore, n: int, rng: np.random.Generator) -> None:
    """``n`` predictions for random users, each followed by its true label as the outcome."""
    outcomes = []
    with GatewayClient(gw.target) as client:
        for _ in range(n):
            i = int(rng.integers(len(store.X)))
            r = client.predict("exp", f"user-{rng.integers(1 << 40)}", store.X[i])
            outcomes.append((r["request_id"], float(store.y[i]), ""))
        assert client.record_outcomes(outcomes) == n


def _settle(gw: InProcessGateway) -> None:
    for writer in (gw.server.logwriter, gw.server.outcome_writer):
        while writer is not None and writer.queued:
            time.sleep(0.02)
    time.sleep(0.06)


@pytest.fixture(scope="session")
def decided(
    demo_store: DemoStore, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Decided]:
    """A database holding "exp" (a constant control against demo-gbdt, a logreg shadow,
    promoted by the policy, then served at 100 %) and "idle" (created, never called). Per
    session, not per module: test_results and test_report read the same one (it takes 15 s)."""
    name = f"abgate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute_sql(pg_url, f'CREATE DATABASE "{name}"'))
    url = with_database(pg_url, name)
    tmp = tmp_path_factory.mktemp("report")
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    constant = register(demo_store.root, tmp, "constant", constant_model(demo_store.X.shape[1]))
    ev = InProcessEvaluator(evaluator_settings(url, demo_store.root, settle=0.0))
    gw: InProcessGateway | None = None
    try:
        definition = ab_definition(
            "exp", constant, shas["demo-gbdt"], primary_metric="accuracy", min_samples=150,
            min_effect=0.05,
            shadows=[cpb.ShadowConfig(name="logreg", model=shas["demo-logreg"], sample_rate=0.5)],
        )  # fmt: skip
        created = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
        )
        idle = ab_definition("idle", constant, shas["demo-gbdt"])
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=idle))
        settings = gateway_settings(
            demo_store, tmp / "gw", url, config=None, evaluator=ev.target, evaluator_token=TOKEN,
            gateway_id="gw-report",
        )  # fmt: skip
        gw = InProcessGateway(settings)
        assert ev.call(ev.server.publisher.wait_acked(created.snapshot_version, count=1))

        rng = np.random.default_rng(11)
        view = created
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and view.status == "running":
            _traffic(gw, demo_store, 40, rng)
            _settle(gw)
            ev.call(ev.server.tick())
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert view.status == "promoted", view.verdict.recommendation
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, timeout=10))
        for _ in range(4):  # served at 100 % after the promotion: the shares plot shows it
            _traffic(gw, demo_store, 40, rng)
            time.sleep(0.1)
        time.sleep(0.3)  # the shadow worker's last batch
        gw.close()  # flushes every logged row
        gw = None
        # A last tick over everything, so the evaluator's sums are complete.
        ev.call(ev.server.tick())
        store = ev.server.store
        assert store is not None
        totals = ev.call(arm_totals(store.pool, "exp"))
    finally:
        if gw is not None:
            gw.close()
        ev.close()
    try:
        yield Decided(url, totals)
    finally:
        asyncio.run(execute_sql(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def arms_of(
    target: str, X: np.ndarray, experiment: str, users: list[str]
) -> tuple[list[str], set[int]]:
    """Each user's arm of ``experiment`` on the gateway at ``target``, and the config versions
    that answered."""
    arms, versions = [], set()
    with GatewayClient(target) as client:
        for i, user in enumerate(users):
            r = client.predict(experiment, user, X[i % len(X)])
            arms.append(r["arm"])
            versions.add(r["config_version"])
    return arms, versions


def predict_error(target: str, X: np.ndarray, experiment: str, user: str) -> RpcFailure:
    with GatewayClient(target) as client, pytest.raises(RpcFailure) as info:
        client.predict(experiment, user, X[0])
    return info.value


def fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one query as dicts, on a connection of its own."""

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())
