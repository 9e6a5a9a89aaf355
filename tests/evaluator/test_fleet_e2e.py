"""Issue 15: one bad experiment must not freeze the fleet. A real evaluator, three real gateway
processes and a real PostgreSQL: an experiment whose model is fine in the evaluator's store but
corrupt in one gateway's is rejected by that gateway alone (it ACKs the snapshot with the
rejection and serves every other experiment), the evaluator pauses and audits it and shows it;
a rollback of another experiment reaches both gateways within a second; a gateway started
afterwards becomes SERVING. Models the evaluator's store does not have are refused at create,
through gRPC and the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from abgate.cli import main as abgate_main
from abgate.client import GatewayClient
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
from tests.gateway.test_grpc_surface import sample, scrape

USERS = [f"user-{i}" for i in range(40)]


def corrupt_copy(store: Path, dest: Path, sha: str) -> Path:
    """``store`` as another machine's copy in which the object ``sha`` is corrupt: the other
    files hard-linked (the same bytes), that one rewritten with one bit flipped."""
    for sub in ("meta", "objects"):
        (dest / sub).mkdir(parents=True)
        for f in (store / sub).iterdir():
            if sub == "objects" and f.stem == sha:
                data = bytearray(f.read_bytes())
                data[len(data) // 2] ^= 1
                (dest / sub / f.name).write_bytes(bytes(data))
            else:
                os.link(f, dest / sub / f.name)
    return dest


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``abgate ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = abgate_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.timeout(300)
def test_one_bad_experiment_does_not_freeze_the_fleet(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    X = demo_store.X
    forest = shas["demo-forest"]
    store_b = corrupt_copy(demo_store.root, tmp_path / "store-b", forest)
    settings = evaluator_settings(fresh_db, demo_store.root, metrics_listen="127.0.0.1:0")
    ev = InProcessEvaluator(settings)
    publisher = ev.server.publisher
    admin = ["--evaluator", ev.target, "--token", TOKEN]
    gateways: dict[str, GatewayProcess] = {}

    def start(name: str, store: Path) -> GatewayProcess:
        args = gateway_args(ev, store, tmp_path / name)
        gp = GatewayProcess([*args, "--gateway-id", name])
        gateways[name] = gp  # before start(): one that never serves is stopped too
        return gp.start(timeout=30)

    try:
        # -- refused at create: a model the evaluator's store does not have ------------------
        unknown = ab_definition("typo", "demo-logreg", "no-such-model")
        with pytest.raises(grpc.RpcError) as info:
            ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=unknown))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == (
            "definition.arms[1].model: no model 'no-such-model' in the store"
        )
        shadow = cpb.ShadowConfig(name="s", model="demo-gbdt:99")
        shadowed = ab_definition("typo", "demo-logreg", "demo-gbdt", shadows=[shadow])
        with pytest.raises(grpc.RpcError) as info:
            ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=shadowed))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == (
            "definition.shadows[0].model: no model 'demo-gbdt:99' in the store"
        )
        code, out, err = cli(capsys, "experiments", "create", *admin, "--name", "typo",
                             "--arm", "a=demo-logreg", "--arm", "b=no-such-model@50",
                             "--arm", "c=demo-gbdt@50")  # fmt: skip
        assert (code, out) == (1, "")
        assert err == (
            "abgate: error: NOT_FOUND: definition.arms[1].model: no model 'no-such-model' "
            "in the store\n"
        )
        assert publisher.version == 0, "nothing was accepted"
        code, _, err = cli(capsys, "evaluator", "--token", TOKEN, "--model-store",
                           str(tmp_path / "nowhere"), "--database-url", fresh_db)  # fmt: skip
        assert code == 2 and err.startswith(f"abgate: error: --model-store {tmp_path}/nowhere: ")

        # -- two good experiments (by model id: the evaluator pins the sha256), two gateways ---
        for name, treatment in (("good-1", "demo-gbdt"), ("good-2", "demo-gbdt:1")):
            definition = ab_definition(name, "demo-logreg", treatment)
            view = ev.admin.call(
                "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
            )
            assert [a.model for a in view.definition.arms] == [
                shas["demo-logreg"],
                shas["demo-gbdt"],
            ]
        start("gw-a", demo_store.root)
        start("gw-b", store_b)  # its copy of demo-forest is corrupt
        assert ev.call(publisher.wait_acked(publisher.version, count=2, timeout=10))
        good_1 = {name: arms_of(gw.target, X, "good-1", USERS)[0] for name, gw in gateways.items()}
        assert good_1["gw-a"] == good_1["gw-b"]
        assert {"control", "treatment"} <= set(good_1["gw-a"])

        # -- the bad one: fine in the evaluator's store, corrupt in gw-b's --------------------
        created = ev.admin.call(
            "CreateExperiment",
            cpb.CreateExperimentRequest(definition=ab_definition("bad", "demo-logreg", forest)),
        )
        assert created.status == "running"
        # gw-b rejects it alone and ACKs; the evaluator pauses it and writes why, and who.
        wait_for(
            lambda: (
                ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="bad")).status == "paused"
            ),
            what="bad paused",
        )
        (audit, *_) = fetch(
            fresh_db,
            "SELECT recommendation, inputs::text AS inputs, from_version, to_version "
            "FROM decisions WHERE experiment = 'bad' AND action = 'reject' ORDER BY id",
        )
        inputs = json.loads(audit["inputs"])
        assert (inputs["gateway"], inputs["version"], inputs["serving_version"]) == ("gw-b", 1, 0)
        assert (inputs["status_before"], inputs["status"]) == ("running", "paused")
        assert inputs["error"].startswith("INVALID_ARGUMENT: arms[1].model: ")
        assert "does not match its sha256" in inputs["error"]
        assert (audit["from_version"], audit["to_version"]) == (1, 2)
        assert audit["recommendation"].startswith("gateway gw-b rejected version 1: ")
        paused = publisher.version
        assert ev.call(publisher.wait_acked(paused, count=2, timeout=10))
        assert publisher.nacks == 0
        arms, versions = arms_of(gateways["gw-a"].target, X, "bad", USERS)
        assert {"control", "treatment"} <= set(arms) and versions == {paused}
        err = predict_error(gateways["gw-b"].target, X, "bad", USERS[0])
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert err.details == (
            "experiment: experiment 'bad' is not served by this gateway: it rejected its config"
        )
        for name, gw in gateways.items():
            assert arms_of(gw.target, X, "good-1", USERS) == (good_1[name], {paused})

        # Shown by `experiments show` and `experiments gateways`, text and --json; counted in
        # /metrics for the alert.
        def show_rejects() -> bool:
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="bad"))
            return [(r.node_id, r.version) for r in view.rejections] == [("gw-b", 2)]

        wait_for(show_rejects, what="gw-b's rejection of the paused version")
        code, out, _ = cli(capsys, "experiments", "show", "bad", *admin)
        lines = out.splitlines()
        assert code == 0 and lines[0].startswith("bad: paused, kind ab, version 2")
        assert lines[1].startswith(
            "  rejected by gateway gw-b (version 2; it serves none): INVALID_ARGUMENT: arms[1]"
        )
        code, out, _ = cli(capsys, "experiments", "show", "bad", *admin, "--json", "--full")
        (rejection,) = json.loads(out)["rejections"]
        assert (rejection["node_id"], rejection["version"], rejection["serving_version"]) == (
            "gw-b",
            2,
            0,
        )
        assert rejection["error"].startswith("INVALID_ARGUMENT: arms[1].model: ")
        code, out, _ = cli(capsys, "experiments", "gateways", *admin)
        assert code == 0
        assert f"  gw-a: version {paused}, connected\n  gw-b: version {paused}, connected\n" in out
        assert "    rejects bad version 2 (serves none): INVALID_ARGUMENT: arms[1]" in out
        code, out, _ = cli(capsys, "experiments", "gateways", *admin, "--json")
        listed = {g["node_id"]: g["rejections"] for g in json.loads(out)["gateways"]}
        assert listed["gw-a"] == [] and [r["experiment"] for r in listed["gw-b"]] == ["bad"]
        metrics = scrape(ev.server.metrics_port)
        assert sample(metrics, "abgate_experiment_rejecting_gateways", experiment="bad") == 1
        assert sample(metrics, "abgate_experiment_rejecting_gateways", experiment="good-1") == 0

        # -- the fleet moves on: a new experiment is served, a rollback reaches both ----------
        definition = ab_definition("good-3", "demo-gbdt", "demo-logreg")
        later = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
        )
        assert ev.call(publisher.wait_acked(later.snapshot_version, count=2, timeout=10))
        for gw in gateways.values():
            assert arms_of(gw.target, X, "good-3", USERS)[1] == {later.snapshot_version}
        treated = USERS[good_1["gw-a"].index("treatment")]
        started = time.monotonic()
        rolled = ev.admin.call("Rollback", cpb.ExperimentRequest(name="good-1", reason="test"))

        def rolled_back_everywhere() -> bool:
            for gw in gateways.values():
                with GatewayClient(gw.target) as client:
                    r = client.predict("good-1", treated, X[0])
                if (r["arm"], r["config_version"]) != ("control", rolled.snapshot_version):
                    return False
            return True

        wait_for(rolled_back_everywhere, timeout=10, what="the rollback on both gateways")
        elapsed = time.monotonic() - started
        print(f"\nrollback -> served by both gateways in {elapsed * 1e3:.0f} ms")
        assert elapsed <= 1.0, f"the rollback took {elapsed:.2f} s to reach both gateways"

        # -- scale out: a third gateway (with gw-b's store) becomes SERVING ------------------
        gw_c = start("gw-c", store_b)
        assert ev.call(publisher.wait_acked(rolled.snapshot_version, count=3, timeout=10))
        assert set(arms_of(gw_c.target, X, "good-1", USERS)[0]) == {"control"}
        for name in ("good-2", "good-3"):
            assert (
                arms_of(gw_c.target, X, name, USERS)[0]
                == arms_of(gateways["gw-a"].target, X, name, USERS)[0]
            )
        assert predict_error(gw_c.target, X, "bad", USERS[0]).code == grpc.StatusCode.UNAVAILABLE
        assert wait_for(
            lambda: [r.node_id for r in ev.admin.call(
                "GetExperiment", cpb.ExperimentRequest(name="bad")).rejections] == ["gw-b", "gw-c"],
            what="gw-c's rejection",
        )  # fmt: skip
    finally:
        for gp in gateways.values():
            if gp.proc is not None and gp.proc.poll() is None:
                code, out = gp.stop()
                assert code == 0, out
        ev.close()
