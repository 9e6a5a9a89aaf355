"""One evaluator decides: the one holding the leader lock (a PostgreSQL advisory lock on a
connection of its own). Others serve the config stream and the admin API, and take over when
the leader goes away."""

from __future__ import annotations

import time
import urllib.request

from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore
from tests.evaluator.conftest import InProcessEvaluator, ab_definition, evaluator_settings


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_one_leader_decides_and_a_standby_takes_over(demo_store: DemoStore, fresh_db: str) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    first = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root, settle=0.0))
    second: InProcessEvaluator | None = None
    try:
        assert wait_until(lambda: first.server.leader)
        second = InProcessEvaluator(
            evaluator_settings(fresh_db, demo_store.root, settle=0.0, metrics_listen="127.0.0.1:0")
        )
        first.admin.call(
            "CreateExperiment",
            cpb.CreateExperimentRequest(
                definition=ab_definition("exp", shas["demo-logreg"], shas["demo-gbdt"])
            ),
        )
        # The standby publishes what the leader's admin wrote, but runs no policy.
        assert wait_until(lambda: "exp" in second.server.latest)
        assert [name for name, _ in first.call(first.server.tick())] == ["exp"]
        assert second.call(second.server.tick()) == []
        assert not second.server.leader and second.server.last_tick_at is None
        url = f"http://127.0.0.1:{second.server.metrics_port}/metrics"
        assert "abgate_evaluator_leader 0.0" in urllib.request.urlopen(url).read().decode()

        first.close()  # its session ends: the lock is free
        assert wait_until(lambda: second.server.leader, timeout=10)
        assert [name for name, _ in second.call(second.server.tick())] == ["exp"]
        assert second.server.last_tick_at is not None
        assert "abgate_evaluator_leader 1.0" in urllib.request.urlopen(url).read().decode()
    finally:
        first.close()
        if second is not None:
            second.close()
