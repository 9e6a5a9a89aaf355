"""End to end: ``abgate experiments archive`` with a real evaluator and a real gateway process
logging to a real PostgreSQL. The archived experiment leaves the snapshot (the gateway ACKs,
answers NOT_FOUND for it) while the other keeps every user on the same arm; its history stays;
an experiment whose model is not in the store is refused at create; unarchive brings one back
with the same users on the same arms; with every experiment archived the gateway serves an
empty snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore, GatewayProcess
from tests.evaluator.conftest import (
    TOKEN,
    InProcessEvaluator,
    ab_definition,
    arms_of,
    evaluator_settings,
    fetch,
    gateway_args,
    predict_error,
)

USERS = [f"user-{i}" for i in range(200)]


def abgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ABGATE_TOKEN": TOKEN, "ABGATE_ACTOR": "oncall-bob"}
    return subprocess.run(
        [sys.executable, "-m", "abgate", "experiments", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(300)
def test_archive_end_to_end(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    X = demo_store.X
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root))
    publisher = ev.server.publisher
    gp: GatewayProcess | None = None
    try:
        for name, treatment in (("keep", "demo-gbdt"), ("gone", "demo-forest")):
            definition = ab_definition(name, shas["demo-logreg"], shas[treatment])
            ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
        v1 = publisher.version
        args = gateway_args(ev, demo_store.root, tmp_path / "gw")
        args.remove("--no-log-predictions")
        gp = GatewayProcess([*args, "--gateway-id", "gw-1", "--database-url", fresh_db,
                             "--log-max-age", "0.05"])  # fmt: skip
        gp.start()
        assert ev.call(publisher.wait_acked(v1, timeout=10))
        target = ["--evaluator", ev.target]

        keep_arms, versions = arms_of(gp.target, X, "keep", USERS)
        gone_arms, _ = arms_of(gp.target, X, "gone", USERS)
        assert versions == {v1} and {"control", "treatment"} <= set(keep_arms)
        wait_for(
            lambda: fetch(fresh_db, "SELECT count(*) AS n FROM predictions "
                          "WHERE experiment = 'gone'")[0]["n"] == len(USERS),
            what="the predictions of 'gone' in PostgreSQL",
        )  # fmt: skip

        # Archive through the CLI: exit 0, the view says archived, a new snapshot without it.
        r = abgate("archive", "gone", *target, "--reason", "wrong treatment", "--json")
        assert r.returncode == 0, r.stderr
        archived = json.loads(r.stdout)
        assert archived["status"] == "archived" and archived["snapshot_version"] > v1
        v2 = archived["snapshot_version"]
        assert ev.call(publisher.wait_acked(v2, timeout=10)), "the gateway ACKs it"
        assert publisher.gateways["gw-1"].last_error == ""
        wait_for(
            lambda: fetch(fresh_db, "SELECT version FROM gateway_status")[0]["version"] == v2,
            what="gateway_status at the new version",
        )

        # The gateway answers NOT_FOUND for it, as for an unknown experiment; the other one
        # keeps every user on the same arm.
        err = predict_error(gp.target, X, "gone", USERS[0])
        unknown = predict_error(gp.target, X, "never-existed", USERS[0])
        assert err.code == unknown.code and err.code.name == "NOT_FOUND"
        assert err.details == "experiment: unknown experiment 'gone'"
        arms, versions = arms_of(gp.target, X, "keep", USERS)
        assert arms == keep_arms and versions == {v2}

        # list hides it (--all shows it); show says archived.
        r = abgate("list", *target)
        assert r.returncode == 0, r.stderr
        listed = [line.split(":")[0] for line in r.stdout.splitlines() if line[:1] != " "]
        assert listed == ["keep"], r.stdout
        r = abgate("list", *target, "--all", "--json")
        assert r.returncode == 0, r.stderr
        statuses = {v["definition"]["name"]: v["status"] for v in json.loads(r.stdout)}
        assert statuses == {"gone": "archived", "keep": "running"}
        r = abgate("show", "gone", *target)
        assert r.returncode == 0 and r.stdout.startswith("gone: archived, kind ab"), r.stdout

        # Kept for audit: its versions, its logged predictions, and who archived it, why, when.
        rows = fetch(fresh_db, "SELECT count(*) AS n FROM predictions WHERE experiment = 'gone'")
        assert rows[0]["n"] == len(USERS)
        versions_rows = fetch(
            fresh_db, "SELECT version FROM experiment_versions WHERE experiment = 'gone'"
        )
        assert sorted(r["version"] for r in versions_rows) == [1, 2]
        (audit,) = fetch(
            fresh_db,
            "SELECT ts, recommendation, inputs::text AS inputs FROM decisions "
            "WHERE experiment = 'gone' AND action = 'archive'",
        )
        assert audit["recommendation"] == "wrong treatment" and audit["ts"] is not None
        assert json.loads(audit["inputs"])["actor"] == "oncall-bob"

        # Refused: promote it, archive it again (exit 1, the status name first); unknown: 1 too.
        r = abgate("promote", "gone", *target, "--arm", "treatment")
        assert r.returncode == 1
        assert r.stderr.startswith("abgate: error: FAILED_PRECONDITION: "), r.stderr
        assert "archived" in r.stderr
        r = abgate("archive", "gone", *target)
        assert r.returncode == 1
        assert r.stderr.startswith("abgate: error: FAILED_PRECONDITION: "), r.stderr
        r = abgate("archive", "no-such-experiment", *target)
        assert r.returncode == 1
        assert r.stderr.startswith("abgate: error: NOT_FOUND: "), r.stderr
        assert publisher.version == v2, "refused calls publish nothing"

        # Issue 15's frozen fleet cannot start any more: an experiment whose model is not in
        # the evaluator's store is refused at create (nothing is published), and the next one
        # is served.
        version = publisher.version
        broken = ab_definition("broken", shas["demo-logreg"], "f" * 64)
        with pytest.raises(grpc.RpcError) as info:
            ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=broken))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == (
            f"definition.arms[1].model: no model {'f' * 64!r} in the store"
        )
        assert publisher.version == version
        later = ab_definition("later", shas["demo-logreg"], shas["demo-gbdt"])
        v3 = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=later)
        ).snapshot_version
        assert ev.call(publisher.wait_acked(v3, timeout=10))
        arms, versions = arms_of(gp.target, X, "later", USERS)
        assert versions == {v3} and {"control", "treatment"} <= set(arms)
        assert arms_of(gp.target, X, "keep", USERS)[0] == keep_arms

        # Unarchive: back in the snapshot with its salt and buckets, the same users on the same
        # arms as before; a running experiment comes back paused.
        r = abgate("unarchive", "gone", *target, "--json")
        assert r.returncode == 0, r.stderr
        back = json.loads(r.stdout)
        assert back["status"] == "paused"
        assert ev.call(publisher.wait_acked(back["snapshot_version"], timeout=10))
        assert arms_of(gp.target, X, "gone", USERS)[0] == gone_arms

        # Archiving every experiment leaves an empty snapshot, ACKed like any other: the gateway
        # stays SERVING and answers NOT_FOUND for each.
        for name in ("gone", "keep", "later"):
            view = ev.admin.call("Archive", cpb.ExperimentRequest(name=name))
        assert publisher.current is not None and list(publisher.current.experiments) == []
        assert ev.call(publisher.wait_acked(view.snapshot_version, timeout=10))
        for name in ("gone", "keep", "later"):
            assert predict_error(gp.target, X, name, USERS[0]).code.name == "NOT_FOUND"
        with grpc.insecure_channel(gp.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        if gp is not None and gp.proc is not None and gp.proc.poll() is None:
            code, out = gp.stop()
            assert code == 0, out
        ev.close()
