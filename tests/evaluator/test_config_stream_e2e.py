"""End to end: a real evaluator and two real gateway processes on a real PostgreSQL. Decisions
reach both gateways, which ACK; a bad version of an experiment is rejected alone (the snapshot
is ACKed with the rejection) while its previous version keeps serving; gateways outlive the
evaluator and restart from their persisted snapshot."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore, GatewayProcess, free_port
from tests.evaluator.conftest import (
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    gateway_args,
)
from tests.evaluator.conftest import arms_of as arms_of_users

USERS = [f"user-{i}" for i in range(200)]


def arms_of(target: str, X: np.ndarray, experiment: str = "exp") -> tuple[list[str], set[int]]:
    """The arm every test user gets from the gateway at ``target``, and the config versions."""
    return arms_of_users(target, X, experiment, USERS)


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _gateway_rows(url: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT * FROM gateway_status ORDER BY node_id")
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def _rejections(url: str, experiment: str) -> list[dict[str, Any]]:
    """The audit rows of gateways' rejections of ``experiment``: inputs (gateway, version,
    error...)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT inputs::text AS inputs FROM decisions WHERE experiment = $1 "
            "AND action = 'reject' AND source = 'gateway' ORDER BY id",
            experiment,
        )
        return [json.loads(r["inputs"]) for r in rows]
    finally:
        await conn.close()


async def _insert_version(url: str, experiment: str, mutate: Any, base: int) -> None:
    """Write a new experiment version, ``mutate``d from version ``base``, straight into
    PostgreSQL, as a buggy writer would."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        text = await conn.fetchval(
            "SELECT config::text FROM experiment_versions WHERE experiment = $1 AND version = $2",
            experiment,
            base,
        )
        config = json.loads(text)
        mutate(config)
        await conn.execute(
            "INSERT INTO experiment_versions (experiment, version, config, created_by) "
            "SELECT $1, max(version) + 1, $2::jsonb, 'test' FROM experiment_versions "
            "WHERE experiment = $1",
            experiment,
            json.dumps(config),
        )
    finally:
        await conn.close()


@pytest.mark.timeout(300)
def test_decisions_reach_both_gateways_and_bad_versions_are_rejected_alone(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    X = demo_store.X
    port = free_port()
    ev = InProcessEvaluator(
        evaluator_settings(fresh_db, demo_store.root, listen=f"127.0.0.1:{port}")
    )
    gateways: list[GatewayProcess] = []
    try:
        created = ev.admin.call(
            "CreateExperiment",
            cpb.CreateExperimentRequest(
                definition=ab_definition("exp", shas["demo-logreg"], shas["demo-gbdt"])
            ),
        )
        v1 = created.snapshot_version
        assert v1 > 0 and created.status == "running"

        # Two gateways with no config file: everything they serve comes over the stream.
        for name in ("gw-a", "gw-b"):
            args = gateway_args(ev, demo_store.root, tmp_path / name)
            gp = GatewayProcess([*args, "--gateway-id", name])
            gateways.append(gp)  # before start(): a gateway that never serves is stopped too
            gp.start()
        assert ev.call(ev.server.publisher.wait_acked(v1, count=2, timeout=10))
        arms_a, versions_a = arms_of(gateways[0].target, X)
        arms_b, versions_b = arms_of(gateways[1].target, X)
        assert arms_a == arms_b, "both gateways route every user identically"
        assert versions_a == versions_b == {v1}
        assert 0.3 < arms_a.count("treatment") / len(USERS) < 0.7

        # The evaluator records what each gateway runs, in memory and in PostgreSQL.
        reply = ev.admin.call("Gateways", cpb.GatewaysRequest())
        assert [(g.node_id, g.version, g.connected) for g in reply.gateways] == [
            ("gw-a", v1, True),
            ("gw-b", v1, True),
        ]
        wait_for(
            lambda: (
                all(
                    r["acked_at"] is not None and r["version"] == v1
                    for r in asyncio.run(_gateway_rows(fresh_db))
                )
                and len(asyncio.run(_gateway_rows(fresh_db))) == 2
            ),
            what="gateway_status rows",
        )

        # A decision (here an operator's promote) reaches both gateways: measure it.
        latencies = []
        version = v1
        for arm in ("treatment", "control", "treatment"):
            view = ev.admin.call(
                "Promote" if arm == "treatment" else "Rollback",
                cpb.ExperimentRequest(name="exp", arm=arm if arm == "treatment" else ""),
            )
            assert view.snapshot_version > version
            version = view.snapshot_version
            publisher = ev.server.publisher
            started = publisher.published_at
            assert ev.call(publisher.wait_acked(version, count=2, timeout=5))
            latencies.append(time.monotonic() - started)
        print(f"\npublish -> both gateways ACKed: {[f'{x * 1e3:.1f} ms' for x in latencies]}")
        assert statistics.median(latencies) < 1.0
        arms_a, versions_a = arms_of(gateways[0].target, X)
        assert set(arms_a) == {"treatment"} and versions_a == {version}
        good = version
        good_version = view.version  # the experiment's own version (snapshots count globally)

        def weights_60_60(config: dict[str, Any]) -> None:
            for arm in config["arms"]:
                arm["weight"] = 60.0

        def missing_model(config: dict[str, Any]) -> None:
            config["arms"][1]["model"] = "f" * 64

        # Bad versions of "exp" written behind the evaluator's back: weights 60/60, then a model
        # that no gateway has. Each gateway rejects that experiment alone: it ACKs the snapshot
        # listing the rejection, keeps serving the experiment's last good version (its answers
        # still say the snapshot it came from), and the evaluator audits it.
        for mutate, status in (
            (weights_60_60, "INVALID_ARGUMENT"),
            (missing_model, "NOT_FOUND"),
        ):
            asyncio.run(_insert_version(fresh_db, "exp", mutate, good_version))
            wait_for(lambda v=version: ev.server.publisher.version > v, what="the bad version")
            version = bad = ev.server.publisher.version
            assert ev.call(ev.server.publisher.wait_acked(bad, count=2, timeout=10))
            bad_version = ev.server.latest["exp"].version
            reply = ev.admin.call("Gateways", cpb.GatewaysRequest())
            for g in reply.gateways:
                assert (g.version, g.last_error) == (bad, "")
                (r,) = g.rejections
                assert (r.experiment, r.version, r.serving_version) == (
                    "exp",
                    bad_version,
                    good_version,
                )
                assert r.error.startswith(status), r.error
            for gp in gateways:
                arms, versions = arms_of(gp.target, X)
                assert set(arms) == {"treatment"} and versions == {good}
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
            assert [r.node_id for r in view.rejections] == ["gw-a", "gw-b"]
            wait_for(
                lambda s=status, v=bad_version: (
                    sum(
                        1
                        for r in asyncio.run(_rejections(fresh_db, "exp"))
                        if r["version"] == v and r["error"].startswith(s)
                    )
                    == 2
                ),
                what="both rejections audited",
            )
        assert ev.server.publisher.nacks == 0, "nothing here refuses a whole snapshot"
        rows = asyncio.run(_gateway_rows(fresh_db))
        assert all(r["version"] == bad for r in rows)

        # The good config written again as a new version is ACKed with nothing rejected; a
        # rollback after it too.
        asyncio.run(_insert_version(fresh_db, "exp", lambda config: None, good_version))
        wait_for(lambda: ev.server.publisher.version > bad, what="the restored version")
        restored = ev.server.publisher.version
        assert ev.call(ev.server.publisher.wait_acked(restored, count=2, timeout=10))
        reply = ev.admin.call("Gateways", cpb.GatewaysRequest())
        assert [list(g.rejections) for g in reply.gateways] == [[], []]
        view = ev.admin.call("Rollback", cpb.ExperimentRequest(name="exp", reason="bad push"))
        fixed = view.snapshot_version
        assert ev.call(ev.server.publisher.wait_acked(fixed, count=2, timeout=10))
        arms_a, versions_a = arms_of(gateways[0].target, X)
        assert set(arms_a) == {"control"} and versions_a == {fixed}

        # The evaluator goes away: the gateways keep serving, without an error.
        ev.close()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for gp in gateways:
                arms, versions = arms_of(gp.target, X[:5])
                assert set(arms) == {"control"} and versions == {fixed}

        # A gateway restarted while the evaluator is down serves its last good snapshot.
        code, _out = gateways[0].stop()
        assert code == 0
        args = gateway_args(ev, demo_store.root, tmp_path / "gw-a")
        gateways[0] = GatewayProcess([*args, "--gateway-id", "gw-a"])
        gateways[0].start()
        arms_a, versions_a = arms_of(gateways[0].target, X)
        assert set(arms_a) == {"control"} and versions_a == {fixed}

        # The evaluator comes back on the same address: both gateways redial (backoff) and
        # report the version they run; a new decision reaches both again.
        ev = InProcessEvaluator(
            evaluator_settings(fresh_db, demo_store.root, listen=f"127.0.0.1:{port}")
        )
        assert ev.call(ev.server.publisher.wait_acked(fixed, count=2, timeout=30))
        view = ev.admin.call("Promote", cpb.ExperimentRequest(name="exp", arm="treatment"))
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, count=2, timeout=5))
        arms_b, versions_b = arms_of(gateways[1].target, X)
        assert set(arms_b) == {"treatment"} and versions_b == {view.snapshot_version}
    finally:
        for gp in gateways:
            if gp.proc is not None and gp.proc.poll() is None:
                gp.stop()
        ev.close()


def test_control_rpcs_are_not_on_the_gateway_listener(
    demo_store: DemoStore, tmp_path: Path, evaluator: InProcessEvaluator
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    evaluator.admin.call(
        "CreateExperiment",
        cpb.CreateExperimentRequest(
            definition=ab_definition("exp", shas["demo-logreg"], shas["demo-forest"])
        ),
    )
    gp = GatewayProcess(gateway_args(evaluator, demo_store.root, tmp_path / "gw"))
    try:
        gp.start()
        with grpc.insecure_channel(gp.target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(
                iter(
                    stub.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                )
            )
            services = {s.name for s in reply.list_services_response.service}
            assert "abgate.v1.InferenceGateway" in services
            assert not {"abgate.v1.ConfigStream", "abgate.v1.EvaluatorAdmin"} & services
            from abgate.v1 import control_pb2_grpc as cpb_grpc

            admin = cpb_grpc.EvaluatorAdminStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                admin.ListExperiments(
                    cpb.ListExperimentsRequest(),
                    metadata=(("authorization", f"Bearer {evaluator.settings.token}"),),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        gp.stop()
