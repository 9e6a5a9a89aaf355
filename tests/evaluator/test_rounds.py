"""Rounds (issue #16): evaluator.rounds on states, and the admin API's RequestRetrain,
StartRound and Approve on a real evaluator (statuses, cooldown, idempotence, audit rows)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from abgate.errors import FailedPrecondition
from abgate.v1 import control_pb2 as cpb
from evaluator.experiments import validate_definition
from evaluator.rounds import approved, champion, next_round
from gateway.allocation import Allocation
from tests.evaluator.conftest import (
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    fetch,
    rpc_code,
)
from tests.trainer.conftest import promoted, register_models

SHA = "ab" * 32


def _promoted_state(kind: int = cpb.AB):  # type: ignore[no-untyped-def]
    state = validate_definition(ab_definition("e", "c" * 64, "t" * 64, kind=kind), now=0.0)
    return state.with_weights({"control": 0.0, "treatment": 100.0}, status="promoted")


def test_next_round_keeps_the_champion_and_its_buckets() -> None:
    state = _promoted_state()
    assert champion(state).name == "treatment"
    new = next_round(state, SHA, now=50.0, retrain_request=7)
    assert [(a.name, a.model, a.weight) for a in new.arms] == [
        ("treatment", "t" * 64, 50.0), ("r2", SHA, 50.0)
    ]  # fmt: skip
    assert (new.status, new.round, new.round_request, new.created_at) == ("running", 2, 7, 50.0)
    alloc = Allocation.from_dict(new.allocation)
    assert alloc.counts() == {"treatment": 5000, "r2": 5000}
    # Only half the users move (to the challenger); nobody moves to the old losing arm.
    assert alloc.moved(Allocation.from_dict(state.allocation)) == 5000


def test_a_canary_round_starts_at_its_first_stage_and_approval_waits() -> None:
    state = _promoted_state(cpb.CANARY)
    waiting = next_round(state, SHA, now=1.0, require_approval=True)
    assert waiting.status == "awaiting_approval" and waiting.weights == {"treatment": 100.0,
                                                                         "r2": 0.0}  # fmt: skip
    started = approved(waiting, now=2.0)
    assert started.status == "running" and started.weights == {"treatment": 99.0, "r2": 1.0}
    assert (started.canary_stage, started.stage_started_at) == (0, 2.0)
    with pytest.raises(FailedPrecondition):
        approved(started, now=3.0)


def test_no_round_starts_while_one_runs() -> None:
    state = validate_definition(ab_definition("e", "c" * 64, "t" * 64), now=0.0)
    with pytest.raises(FailedPrecondition) as info:
        next_round(state, SHA, now=1.0)
    assert "is running (round 1)" in info.value.message
    # A round-2 champion named r3 gets a challenger that is not called r3 too.
    third = next_round(next_round(_promoted_state(), SHA, now=1.0).with_weights(
        {"treatment": 0.0, "r2": 100.0}, status="promoted"), "cd" * 32, now=2.0)  # fmt: skip
    assert [a.name for a in third.arms] == ["r2", "r3"] and third.round == 3


@pytest.fixture
def ev(fresh_db: str, tmp_path: Path) -> InProcessEvaluator:
    store = tmp_path / "models"
    champion_sha, control_sha = register_models(store)
    e = InProcessEvaluator(evaluator_settings(fresh_db, store, round_cooldown=0.0))
    e.shas = (champion_sha, control_sha)  # type: ignore[attr-defined]
    yield e  # type: ignore[misc]
    e.close()


def _start(ev: InProcessEvaluator, **kw: object) -> cpb.ExperimentView:
    return ev.admin.call("StartRound", cpb.StartRoundRequest(**kw))


def test_start_round_through_the_admin_api(ev: InProcessEvaluator) -> None:
    champ, control = ev.shas  # type: ignore[attr-defined]
    ev.admin.call(
        "CreateExperiment", cpb.CreateExperimentRequest(definition=ab_definition("exp", control,
                                                                                 champ))
    )  # fmt: skip
    call = ev.admin.stub.StartRound
    md = ev.admin.metadata
    # Running: no next round yet.
    assert rpc_code(call, cpb.StartRoundRequest(experiment="exp", model=control), metadata=md) \
        == grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip
    assert rpc_code(call, cpb.StartRoundRequest(experiment="nope", model=control), metadata=md) \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert rpc_code(call, cpb.StartRoundRequest(experiment="exp", model="missing"), metadata=md) \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert rpc_code(call, cpb.StartRoundRequest(experiment="exp"), metadata=md) \
        == grpc.StatusCode.INVALID_ARGUMENT  # fmt: skip
    assert rpc_code(call, cpb.StartRoundRequest(experiment="exp", model=control)) \
        == grpc.StatusCode.UNAUTHENTICATED  # fmt: skip
    ev.admin.call("Promote", cpb.ExperimentRequest(name="exp", arm="treatment"))
    view = _start(ev, experiment="exp", model="churn-stump", retrain_request=5, actor="me")
    assert view.status == "running"
    assert dict(view.weights) == {"treatment": 50.0, "r2": 50.0}
    assert json.loads(view.details_json)["round"] == 2
    # The same retrain request asking again gets the same round, not a third.
    again = _start(ev, experiment="exp", model="churn-stump", retrain_request=5)
    assert again.version == view.version
    (audit,) = fetch(ev.settings.database_url,
                     "SELECT inputs, from_version, to_version FROM decisions"
                     " WHERE action = 'round_started'")  # fmt: skip
    inputs = json.loads(audit["inputs"])
    assert (inputs["round"], inputs["retrain_request"], inputs["actor"]) == (2, 5, "me")
    assert inputs["challenger"] == {"arm": "r2", "model": control}
    assert (audit["from_version"], audit["to_version"]) == (2, 3)


def test_the_cooldown_holds_the_next_round(fresh_db: str, tmp_path: Path) -> None:
    store = tmp_path / "models"
    champ, control = register_models(store)
    ev = InProcessEvaluator(evaluator_settings(fresh_db, store, round_cooldown=3600.0))
    try:
        promoted(ev, "exp", control, champ)
        with pytest.raises(grpc.RpcError) as info:
            _start(ev, experiment="exp", model=control)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cooldown (--round-cooldown)" in info.value.details()
        # Ended an hour ago (the promoting version's time moved back): it starts.
        fetch(fresh_db, "UPDATE experiment_versions SET created_at = now() - interval '2 hours'"
                        " RETURNING 1")  # fmt: skip
        assert _start(ev, experiment="exp", model=control).status == "running"
    finally:
        ev.close()


def test_manual_approval_leaves_the_round_waiting(ev: InProcessEvaluator) -> None:
    champ, control = ev.shas  # type: ignore[attr-defined]
    promoted(ev, "exp", control, champ)
    view = _start(ev, experiment="exp", model=control, require_approval=True)
    assert view.status == "awaiting_approval"
    assert dict(view.weights) == {"treatment": 100.0, "r2": 0.0}
    approve = ev.admin.stub.Approve
    assert rpc_code(approve, cpb.ExperimentRequest(name="nope"), metadata=ev.admin.metadata) \
        == grpc.StatusCode.NOT_FOUND  # fmt: skip
    view = ev.admin.call("Approve", cpb.ExperimentRequest(name="exp", actor="boss"))
    assert view.status == "running" and dict(view.weights) == {"treatment": 50.0, "r2": 50.0}
    assert rpc_code(approve, cpb.ExperimentRequest(name="exp"), metadata=ev.admin.metadata) \
        == grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip
    actions = [r["action"] for r in fetch(ev.settings.database_url,
                                          "SELECT action FROM decisions ORDER BY id")]  # fmt: skip
    assert actions[-2:] == ["round_started", "approve"]


def test_request_retrain(ev: InProcessEvaluator) -> None:
    champ, control = ev.shas  # type: ignore[attr-defined]
    promoted(ev, "exp", control, champ)
    call = ev.admin.stub.RequestRetrain
    assert rpc_code(call, cpb.RequestRetrainRequest(experiment="nope"),
                    metadata=ev.admin.metadata) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert rpc_code(call, cpb.RequestRetrainRequest(experiment=""),
                    metadata=ev.admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT  # fmt: skip
    assert rpc_code(call, cpb.RequestRetrainRequest(experiment="exp", reason="a\x00b"),
                    metadata=ev.admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT  # fmt: skip
    assert rpc_code(call, cpb.RequestRetrainRequest(experiment="exp")) \
        == grpc.StatusCode.UNAUTHENTICATED  # fmt: skip
    first = ev.admin.call(
        "RequestRetrain", cpb.RequestRetrainRequest(experiment="exp", reason="why", actor="me")
    )
    second = ev.admin.call("RequestRetrain", cpb.RequestRetrainRequest(experiment="exp"))
    assert (first.created, second.created, second.id) == (True, False, first.id)
    (row,) = fetch(ev.settings.database_url, "SELECT * FROM retrain_requests")
    assert (row["source"], row["reason"], row["requested_by"], row["state"]) == (
        "manual", "why", "me", "pending")  # fmt: skip
    audits = fetch(
        ev.settings.database_url, "SELECT inputs FROM decisions WHERE action = 'retrain_requested'"
    )
    assert len(audits) == 1 and json.loads(audits[0]["inputs"])["request"] == first.id


def test_start_round_and_approve_from_the_command_line(
    ev: InProcessEvaluator, capsys: pytest.CaptureFixture[str]
) -> None:
    from abgate.cli import main

    champ, control = ev.shas  # type: ignore[attr-defined]
    promoted(ev, "exp", control, champ)
    common = ["--evaluator", ev.target, "--token", ev.settings.token]
    assert main(["experiments", "start-round", "exp", "--model", "no-such", *common]) == 1
    assert "NOT_FOUND: model: no model 'no-such' in the store" in capsys.readouterr().err
    assert main(["experiments", "start-round", "exp", "--model", "churn-stump",
                 "--require-approval", *common]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "exp: awaiting_approval" in out and "round 2: treatment" in out
    assert main(["experiments", "start-round", "exp", "--model", "churn-stump", *common]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert main(["experiments", "approve", "exp", *common]) == 0
    assert "treatment=50%, r2=50%" in capsys.readouterr().out


def test_history_lists_the_steps_of_the_cycle(
    ev: InProcessEvaluator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`abgate experiments history` (the History RPC): the audit rows oldest first, the
    tick's 'continue' verdicts only with --all, errors by status and exit code."""
    from abgate.cli import main

    champ, control = ev.shas  # type: ignore[attr-defined]
    promoted(ev, "exp", control, champ)
    ev.admin.call("RequestRetrain", cpb.RequestRetrainRequest(experiment="exp", reason="drifted"))
    _start(ev, experiment="exp", model=control)
    url = ev.settings.database_url
    fetch(url, "INSERT INTO decisions (experiment, action, recommendation) VALUES "
               "('exp', 'continue', 'continue: waiting')  RETURNING id")  # fmt: skip
    actions = [r["action"] for r in fetch(url, "SELECT action FROM decisions ORDER BY id")]
    common = ["--evaluator", ev.target, "--token", ev.settings.token]
    assert main(["experiments", "history", "exp", "--json", *common]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in rows] == [a for a in actions if a != "continue"]
    assert rows[-1]["action"] == "round_started" and rows[-1]["to_version"] > 0
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    requested = next(r for r in rows if r["action"] == "retrain_requested")
    assert requested["recommendation"] == "drifted" and requested["inputs"]["request"] >= 1
    assert main(["experiments", "history", "exp", "--all", "--limit", "2", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "continue" in lines[-1] and "round_started" in lines[0]
    assert main(["experiments", "history", "nope", *common]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["experiments", "history", "exp", "--limit", "-1", *common]) == 2
    call = ev.admin.stub.History
    assert rpc_code(call, cpb.HistoryRequest(name="exp", limit=20_000),
                    metadata=ev.admin.metadata) == grpc.StatusCode.INVALID_ARGUMENT  # fmt: skip
    assert rpc_code(call, cpb.HistoryRequest(name="exp")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_schedule_asks_for_a_retrain_of_each_champion(fresh_db: str, tmp_path: Path) -> None:
    """--retrain-every: a champion whose round ended (or whose last request was made) that long
    ago gets a request (source schedule) with its audit row; a running experiment does not; a
    pending request is not asked again; after an answer the clock starts from the request."""
    store = tmp_path / "models"
    champ, control = register_models(store)
    ev = InProcessEvaluator(
        evaluator_settings(fresh_db, store, settle=0.0, tick_interval=3600, retrain_every=1.0)
    )
    try:
        promoted(ev, "exp", control, champ)
        ev.admin.call(
            "CreateExperiment",
            cpb.CreateExperimentRequest(definition=ab_definition("run", control, champ)),
        )
        ev.call(ev.server.tick())
        assert fetch(fresh_db, "SELECT id FROM retrain_requests") == []  # not a second yet
        time.sleep(1.1)
        for _ in range(3):
            ev.call(ev.server.tick())
        (row,) = fetch(fresh_db, "SELECT * FROM retrain_requests")
        assert (row["experiment"], row["source"], row["requested_by"]) == (
            "exp", "schedule", "evaluator"
        )  # fmt: skip
        assert "scheduled retrain of champion treatment (--retrain-every 1 s)" in row["reason"]
        assert json.loads(row["details"])["model"] == champ
        audits = fetch(
            fresh_db,
            "SELECT source, inputs FROM decisions WHERE action = 'retrain_requested'",
        )
        assert [a["source"] for a in audits] == ["schedule"]
        fetch(fresh_db, "UPDATE retrain_requests SET state = 'rejected' RETURNING id")
        ev.call(ev.server.tick())
        assert len(fetch(fresh_db, "SELECT id FROM retrain_requests")) == 1  # from the request
        time.sleep(1.1)
        ev.call(ev.server.tick())
        rows = fetch(fresh_db, "SELECT experiment, source FROM retrain_requests ORDER BY id")
        assert [(r["experiment"], r["source"]) for r in rows] == [("exp", "schedule")] * 2
    finally:
        ev.close()


def test_retrain_every_must_not_be_negative(
    fresh_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from abgate.cli import main

    monkeypatch.setenv("ABGATE_TOKEN", "t" * 32)

    store = tmp_path / "models"
    store.mkdir()
    code = main(["evaluator", "--database-url", fresh_db, "--model-store", str(store),
                 "--retrain-every", "-1"])  # fmt: skip
    assert code == 2
    assert "--retrain-every must be 0 (off) or more seconds, not -1.0" in capsys.readouterr().err
