"""An A/B test decided by the policy on real traffic: predictions and ground-truth outcomes go
through two gateways into PostgreSQL, the evaluator aggregates them, promotes the truly better
arm on its own, and both gateways ACK the new split."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import onnxruntime as ort
import pytest

from abgate.client import GatewayClient
from abgate.v1 import control_pb2 as cpb
from gateway.modelstore import ModelStore
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.onnx_models import constant_model, register


def traffic(
    gw: InProcessGateway, X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
) -> None:
    """``n`` predictions for random users, each followed by its true label as the outcome."""
    outcomes = []
    with GatewayClient(gw.target) as client:
        for _ in range(n):
            i = int(rng.integers(len(X)))
            r = client.predict("exp", f"user-{rng.integers(1 << 40)}", X[i])
            outcomes.append((r["request_id"], float(y[i]), ""))
        assert client.record_outcomes(outcomes) == n


def holdout_accuracy(store: DemoStore, sha: str) -> float:
    """Accuracy of the stored ONNX model ``sha`` on the rows the traffic draws from."""
    session = ort.InferenceSession(ModelStore(store.root).load_bytes(sha))
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: store.X.astype(np.float32)})[0]
    return float(np.mean(np.asarray(labels).ravel() == store.y))


def settle(gateways: list[InProcessGateway]) -> None:
    for gw in gateways:
        for writer in (gw.server.logwriter, gw.server.outcome_writer):
            while writer is not None and writer.queued:
                time.sleep(0.02)
    time.sleep(0.06)


def test_policy_promotes_the_better_model_from_real_outcomes(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    constant = register(
        demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1])
    )
    gbdt = demo_store.metas["demo-gbdt"].sha256

    # --tick-rows 40: each tick reads the rows logged since the last in several transactions.
    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, settle=0.0, metrics_listen="127.0.0.1:0", tick_rows=40
        )
    )
    gateways: list[InProcessGateway] = []
    try:
        definition = ab_definition(
            "exp", constant, gbdt, primary_metric="accuracy", min_samples=50, min_effect=0.05
        )
        created = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
        )
        for name in ("gw-1", "gw-2"):
            settings = gateway_settings(
                demo_store, tmp_path / name, fresh_db, config=None, evaluator=ev.target,
                evaluator_token=TOKEN, gateway_id=name, metrics_listen="127.0.0.1:0",
            )  # fmt: skip
            gateways.append(InProcessGateway(settings))
        assert ev.call(ev.server.publisher.wait_acked(created.snapshot_version, count=2))

        rng = np.random.default_rng(3)
        # The evaluator ticks on its own (every 0.2 s here); tick() between rounds just makes
        # the test quicker.
        deadline = time.monotonic() + 120
        view = created
        while time.monotonic() < deadline and view.status == "running":
            for gw in gateways:
                traffic(gw, demo_store.X, demo_store.y, 60, rng)
            settle(gateways)
            ev.call(ev.server.tick())
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        verdict = view.verdict
        assert view.status == "promoted", verdict.recommendation
        assert verdict.winner == "treatment" and verdict.recommendation.startswith("promote")
        # The constant model is right only on the negative class; gbdt on nearly all rows. The
        # policy promotes at the first look where the test is significant, so the point estimate
        # carries sampling noise (sd ~0.06 at that size): check it against the true difference
        # with a tolerance and require the confidence sequence to cover the truth.
        true_effect = holdout_accuracy(demo_store, gbdt) - float(np.mean(demo_store.y == 0))
        assert verdict.ci[0] <= true_effect <= verdict.ci[1], (true_effect, list(verdict.ci))
        assert abs(verdict.effect_size - true_effect) < 0.25, (verdict.effect_size, true_effect)
        assert verdict.ci[0] > 0.05 and verdict.p_value < 0.05

        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert view.status == "promoted" and dict(view.weights) == {
            "control": 0.0,
            "treatment": 100.0,
        }
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, count=2, timeout=10))
        for gw in gateways:
            with GatewayClient(gw.target) as client:
                arms = {client.predict("exp", f"u{i}", demo_store.X[0])["arm"] for i in range(50)}
            assert arms == {"treatment"}

        # The verdict as a user reads it, and the decision in the audit table.
        r = subprocess.run(
            [sys.executable, "-m", "abgate", "experiments", "show", "exp", "--json",
             "--evaluator", ev.target, "--token", TOKEN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        assert shown["winner"] == "treatment" and shown["recommendation"].startswith("promote")
        assert shown["ci"][0] < shown["effect_size"] < shown["ci"][1]
        audit = ev.call(ev.server.store.decisions("exp"))
        promote = [d for d in audit if d["action"] == "promote"]
        assert len(promote) == 1 and promote[0]["source"] == "policy"
        assert promote[0]["to_version"] == view.version
        # Gateways export what the stream did.
        gw = gateways[0]
        url = f"http://127.0.0.1:{gw.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'abgate_config_acks_total{gateway="gw-1"} 2.0' in text
        assert 'abgate_config_nacks_total{gateway="gw-1"} 0.0' in text
        assert 'abgate_config_stream_connected{gateway="gw-1"} 1.0' in text
        assert f'abgate_config_version{{gateway="gw-1"}} {float(view.snapshot_version)}' in text
        tests = promote[0]["statistics"]["tests"]["treatment"]
        assert tests["n"] >= 100 and promote[0]["statistics"]["srm"]["checked"] in (True, False)

        # The evaluator exports what it decided and what every gateway runs.
        url = f"http://127.0.0.1:{ev.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'abgate_evaluator_decisions_total{action="promote"} 1.0' in text
        for name in ("gw-1", "gw-2"):
            line = f'abgate_gateway_config_version{{node="{name}"}} {float(view.snapshot_version)}'
            assert line in text
        assert f"abgate_evaluator_snapshot_version {float(view.snapshot_version)}" in text
        assert 'abgate_evaluator_config_answers_total{answer="nack"} 0.0' in text
        assert 'abgate_experiment_running{experiment="exp"} 0.0' in text
        last_tick = re.search(r"^abgate_evaluator_last_tick_timestamp_seconds (\S+)$", text, re.M)
        assert last_tick is not None and 0 <= time.time() - float(last_tick.group(1)) < 60
        # It counts the log rows it read (every prediction row up to its watermark, served or
        # shadow), whatever number of transactions read them.
        assert ev.server.last_tick is not None
        for _ in range(50):
            read = ev.call(_rows_read(fresh_db))
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if ev.call(_rows_read(fresh_db)) == read:
                break
        pattern = r'^abgate_evaluator_rows_aggregated_total\{table="(\w+)"\} (\S+)$'
        counted = {m[0]: float(m[1]) for m in re.findall(pattern, text, re.M)}
        assert counted == {"predictions": read[0], "outcomes": read[1]} and read[0] > 100

        # A restarted evaluator still shows the verdict (read back from the audit table).
        ev.close()
        ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root, settle=0.0))
        again = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert again.verdict == view.verdict and again.status == "promoted"
    finally:
        for gw in gateways:
            gw.close()
        ev.close()


def create_and_subscribe(
    ev: InProcessEvaluator,
    definition: cpb.ExperimentDefinition,
    demo_store: DemoStore,
    tmp_path: Path,
    fresh_db: str,
) -> tuple[cpb.ExperimentView, InProcessGateway]:
    """Create the experiment on ``ev`` and start a gateway subscribed to it that has
    acknowledged the new version."""
    created = ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
    settings = gateway_settings(
        demo_store, tmp_path / "gw", fresh_db, config=None, evaluator=ev.target,
        evaluator_token=TOKEN, gateway_id=f"gw-{definition.name}",
    )  # fmt: skip
    gw = InProcessGateway(settings)
    assert ev.call(ev.server.publisher.wait_acked(created.snapshot_version))
    return created, gw


def test_bandit_reweights_through_the_stream_and_keeps_users_sticky(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    constant = register(
        demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1])
    )
    gbdt = demo_store.metas["demo-gbdt"].sha256
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root, settle=0.0, seed=5))
    gw: InProcessGateway | None = None
    try:
        definition = ab_definition(
            "exp", constant, gbdt, kind=cpb.BANDIT, min_samples=50, bandit_floor=0.1,
            bandit_interval_s=0.0,
        )  # fmt: skip
        created, gw = create_and_subscribe(ev, definition, demo_store, tmp_path, fresh_db)
        users = [f"sticky-{i}" for i in range(400)]
        with GatewayClient(gw.target) as client:
            before = {u: client.predict("exp", u, demo_store.X[0])["arm"] for u in users}
        rng = np.random.default_rng(4)
        view = created
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and view.weights["treatment"] <= 50.0:
            traffic(gw, demo_store.X, demo_store.y, 100, rng)
            settle([gw])
            ev.call(ev.server.tick())
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert view.status == "running" and view.weights["treatment"] > 50.0
        # The floor holds: control keeps at least 10 %.
        assert view.weights["control"] >= 10.0 - 1e-9
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, timeout=10))
        with GatewayClient(gw.target) as client:
            after = {u: client.predict("exp", u, demo_store.X[0])["arm"] for u in users}
        # Re-weighting toward treatment moves control users only: nobody leaves treatment.
        assert all(after[u] == "treatment" for u in users if before[u] == "treatment")
        moved = sum(before[u] != after[u] for u in users)
        assert 0 < moved < len(users)
        audit = ev.call(ev.server.store.decisions("exp"))
        assert any(d["action"] == "reweight" and d["source"] == "policy" for d in audit)
    finally:
        if gw is not None:
            gw.close()
        ev.close()


def test_a_bandit_between_equal_models_names_no_winner_and_promote_refuses(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    """Two arms serving the same model: however the bandit re-weights, its verdict names no
    tested winner, so `promote` without an arm refuses (it used to promote the best raw mean)."""
    gbdt = demo_store.metas["demo-gbdt"].sha256
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root, settle=0.0, seed=5))
    gw: InProcessGateway | None = None
    try:
        definition = ab_definition(
            "exp", gbdt, gbdt, kind=cpb.BANDIT, min_samples=50, bandit_interval_s=0.0
        )
        _, gw = create_and_subscribe(ev, definition, demo_store, tmp_path, fresh_db)
        rng = np.random.default_rng(6)
        for _ in range(4):
            traffic(gw, demo_store.X, demo_store.y, 100, rng)
            settle([gw])
            ev.call(ev.server.tick())
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert view.status == "running" and view.verdict.winner == ""
        assert "is not tested better" in view.verdict.recommendation
        with pytest.raises(grpc.RpcError) as info:
            ev.admin.call("Promote", cpb.ExperimentRequest(name="exp"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has no winner yet" in (info.value.details() or "")
    finally:
        if gw is not None:
            gw.close()
        ev.close()


async def _rows_read(url: str) -> tuple[int, int]:
    """Prediction and outcome rows at or below the evaluator's watermarks."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM predictions p, evaluation_watermark w"
            " WHERE p.seq <= w.prediction_seq),"
            " (SELECT count(*) FROM outcomes o, evaluation_watermark w"
            " WHERE o.seq <= w.outcome_seq)"
        )
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()
