"""Canaries on the real stack: evaluator + gateway + PostgreSQL logs. A treatment model that
fails on real traffic, or one slower than its latency guardrail, is rolled back by the policy
with no operator; a healthy canary advances through its stages, and so does its next round
(the one a retrain starts: a canary again, from the first stage)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from abgate.client import GatewayClient, RpcFailure
from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.onnx_models import faulty_model, register


def drive(
    gw: InProcessGateway, X: np.ndarray, users: int, experiment: str = "canary", first: int = 0
) -> dict:
    """One Predict per user (users ``u{first}``, ``u{first + 1}``…); returns counts of OK
    answers by arm and of failures. The users are fixed so that a run is the same traffic each
    time."""
    counts: dict[str, int] = {}
    with GatewayClient(gw.target) as client:
        for i in range(first, first + users):
            try:
                r = client.predict(experiment, f"u{i}", X[i % len(X)])
                counts[r["arm"]] = counts.get(r["arm"], 0) + 1
            except RpcFailure as exc:
                counts[exc.code.name] = counts.get(exc.code.name, 0) + 1
    return counts


def run_until(ev: InProcessEvaluator, gw: InProcessGateway, X: np.ndarray, status: str) -> None:
    """Traffic and evaluation ticks until the experiment reaches ``status``."""
    deadline = time.monotonic() + 90
    first = 0
    while time.monotonic() < deadline:
        drive(gw, X, 100, first=first)
        first += 100
        writer = gw.server.logwriter
        while writer.queued:  # flushed every log_max_age (50 ms here)
            time.sleep(0.02)
        time.sleep(0.06)  # the last batch's transaction commits
        ev.call(ev.server.tick())
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="canary"))
        if view.status == status:
            return
    raise AssertionError(f"canary never became {status}: {view.verdict.recommendation}")


def canary_stack(
    demo_store: DemoStore,
    tmp_path: Path,
    fresh_db: str,
    treatment: str,
    min_samples: int = 20,
    **guardrails: float,
) -> tuple[InProcessEvaluator, InProcessGateway]:
    """An evaluator and a gateway running one canary; guardrails and the canary's metric
    rollback judge an arm after min(``min_samples``, 100) of its rows."""
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    ev = InProcessEvaluator(
        evaluator_settings(fresh_db, demo_store.root, settle=0.0, evaluate=True, round_cooldown=0)
    )
    definition = ab_definition(
        "canary",
        shas["demo-logreg"],
        treatment,
        kind=cpb.CANARY,
        min_samples=min_samples,
        stage_hold_s=0.0,
        # Enough rows to catch 3x a guardrail's limit would be 1,016 treatment rows per stage
        # for a 1 % limit: far more traffic than a test drives.
        stage_min_rows=5,
        guardrails=cpb.Guardrails(**guardrails),
    )
    ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
    settings = gateway_settings(
        demo_store,
        tmp_path,
        fresh_db,
        config=None,
        evaluator=ev.target,
        evaluator_token=ev.settings.token,
        gateway_id="gw-canary",
    )
    gw = InProcessGateway(settings)
    assert ev.call(ev.server.publisher.wait_acked(ev.server.publisher.version, timeout=10))
    return ev, gw


def test_canary_whose_treatment_errors_is_rolled_back(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    faulty = register(demo_store.root, tmp_path, "faulty", faulty_model(demo_store.X.shape[1]))
    # Judged after 5 treatment rows: at the 1 % stage that is about 500 requests.
    ev, gw = canary_stack(demo_store, tmp_path, fresh_db, faulty, 5, max_error_rate=0.05)
    try:
        run_until(ev, gw, demo_store.X, "rolled_back")
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="canary"))
        assert view.verdict.recommendation.startswith("rollback: guardrail breached")
        assert "error rate" in view.verdict.recommendation
        assert dict(view.weights) == {"control": 100.0, "treatment": 0.0}
        # Pushed to the gateway: every user is back on control, without errors.
        assert ev.call(ev.server.publisher.wait_acked(ev.server.publisher.version, timeout=10))
        assert drive(gw, demo_store.X, 200) == {"control": 200}
        decisions = ev.call(ev.server.store.decisions("canary"))
        rollback = [d for d in decisions if d["action"] == "rollback"]
        assert len(rollback) == 1 and rollback[0]["source"] == "policy"
        stats = rollback[0]["statistics"]
        assert stats["arms"]["treatment"]["window_errors"] > 0
        assert rollback[0]["to_version"] == view.version
    finally:
        gw.close()
        ev.close()


def test_canary_slower_than_its_latency_guardrail_is_rolled_back(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    # 1 µs p99: no real model answers that fast, so the guardrail must trip on real latencies.
    ev, gw = canary_stack(
        demo_store,
        tmp_path,
        fresh_db,
        demo_store.metas["demo-forest"].sha256,
        5,
        max_p99_latency_ms=0.001,
    )
    try:
        run_until(ev, gw, demo_store.X, "rolled_back")
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="canary"))
        assert "p99 latency" in view.verdict.recommendation
        assert dict(view.weights) == {"control": 100.0, "treatment": 0.0}
    finally:
        gw.close()
        ev.close()


def test_healthy_canary_advances_through_every_stage(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    ev, gw = canary_stack(
        demo_store,
        tmp_path,
        fresh_db,
        demo_store.metas["demo-gbdt"].sha256,
        max_error_rate=0.05,
        max_p99_latency_ms=1000.0,
    )
    try:
        run_until(ev, gw, demo_store.X, "promoted")
        decisions = ev.call(ev.server.store.decisions("canary"))
        actions = [d["action"] for d in decisions if d["action"] in {"advance", "promote"}]
        assert actions == ["advance"] * 4 + ["promote"]
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="canary"))
        assert dict(view.weights) == {"control": 0.0, "treatment": 100.0}
        assert ev.call(ev.server.publisher.wait_acked(ev.server.publisher.version, timeout=10))
        assert drive(gw, demo_store.X, 100) == {"treatment": 100}

        # The next round (what the trainer asks for after a retrain): a canary experiment's
        # round is a canary too, starting at its first stage, decided by the same policy.
        forest = demo_store.metas["demo-forest"].sha256
        view = ev.admin.call(
            "StartRound", cpb.StartRoundRequest(experiment="canary", model=forest, reason="t")
        )
        assert (view.status, dict(view.weights)) == ("running", {"treatment": 99.0, "r2": 1.0})
        assert ev.call(ev.server.publisher.wait_acked(ev.server.publisher.version, timeout=10))
        first = drive(gw, demo_store.X, 1000, first=100_000)
        assert first.get("r2", 0) + first["treatment"] == 1000 and first.get("r2", 0) < 40
        run_until(ev, gw, demo_store.X, "promoted")
        decisions = ev.call(ev.server.store.decisions("canary"))
        actions = [d["action"] for d in decisions if d["action"] in {"advance", "promote"}]
        assert actions == (["advance"] * 4 + ["promote"]) * 2
        last = [d for d in decisions if d["action"] == "promote"][-1]
        assert "promote r2" in last["recommendation"]
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="canary"))
        assert dict(view.weights) == {"treatment": 0.0, "r2": 100.0}
        assert ev.call(ev.server.publisher.wait_acked(ev.server.publisher.version, timeout=10))
        assert drive(gw, demo_store.X, 100) == {"r2": 100}
    finally:
        gw.close()
        ev.close()
