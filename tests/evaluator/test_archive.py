"""Archiving an experiment, on a real evaluator and a real PostgreSQL: out of every snapshot and
of ``list``, kept with its versions and audit trail, refused by every other operation, ignored by
the tick, and brought back by ``unarchive`` with its own salt and buckets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from evaluator.experiments import ExperimentState, snapshot_message, validate_definition
from evaluator.policy import Decision
from tests.conftest import DemoStore
from tests.evaluator.conftest import (
    TOKEN,
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    fetch,
    rpc_code,
)
from tests.evaluator.test_control_plane import pki as _pki  # noqa: F401  (a fixture)

A, B = "a" * 64, "b" * 64  # for snapshots built here; the evaluator's come from `models`


@pytest.fixture
def models(demo_store: DemoStore) -> tuple[str, str]:
    """Two models of the evaluator's store (the demo store), by sha256."""
    return demo_store.metas["demo-logreg"].sha256, demo_store.metas["demo-gbdt"].sha256


@pytest.fixture
def ev(
    fresh_db: str, demo_store: DemoStore, models: tuple[str, str]
) -> Iterator[InProcessEvaluator]:
    """An evaluator whose ticks run only when a test calls them, auditing every verdict."""
    e = InProcessEvaluator(
        evaluator_settings(fresh_db, demo_store.root, tick_interval=3600, audit_interval=0)
    )
    try:
        for name in ("keep", "gone"):
            e.admin.call(
                "CreateExperiment",
                cpb.CreateExperimentRequest(definition=ab_definition(name, *models)),
            )
        yield e
    finally:
        e.close()


def _names(snapshot: cpb.ConfigSnapshot | None) -> list[str]:
    assert snapshot is not None
    return [x.name for x in snapshot.experiments]


def test_snapshot_message_leaves_archived_experiments_out() -> None:
    keep = validate_definition(ab_definition("keep", A, B), now=1.0)
    gone = validate_definition(ab_definition("gone", A, B), now=1.0)
    archived = replace(gone, status="archived", archived_from="running")
    assert _names(snapshot_message(7, [keep, gone])) == ["gone", "keep"]
    snap = snapshot_message(8, [keep, archived])
    assert snap.version == 8 and _names(snap) == ["keep"]
    assert _names(snapshot_message(9, [archived])) == []
    # A version written before archiving existed (no archived_from) still reads.
    doc = keep.to_json()
    doc.pop("archived_from")
    assert ExperimentState.from_json(doc) == keep
    assert ExperimentState.from_json(archived.to_json()) == archived


def test_archive_takes_it_out_of_the_snapshot_and_keeps_its_history(
    ev: InProcessEvaluator, fresh_db: str
) -> None:
    before = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="gone"))
    v_before = ev.server.publisher.version
    assert _names(ev.server.publisher.current) == ["gone", "keep"]

    view = ev.admin.call(
        "Archive", cpb.ExperimentRequest(name="gone", reason="wrong model", actor="alice")
    )
    assert (view.status, view.version) == ("archived", 2)
    # A new snapshot version without it: gateways get it and drop the experiment.
    assert view.snapshot_version > v_before == before.snapshot_version
    assert ev.server.publisher.version == view.snapshot_version
    assert _names(ev.server.publisher.current) == ["keep"]

    # Hidden from list unless asked for; show still shows it, with its definition and split.
    listed = ev.admin.call("ListExperiments", cpb.ListExperimentsRequest())
    assert [v.definition.name for v in listed.experiments] == ["keep"]
    listed = ev.admin.call("ListExperiments", cpb.ListExperimentsRequest(include_archived=True))
    assert [(v.definition.name, v.status) for v in listed.experiments] == [
        ("gone", "archived"),
        ("keep", "running"),
    ]
    shown = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="gone"))
    assert shown.status == "archived"
    assert shown.definition == before.definition and dict(shown.weights) == dict(before.weights)

    # Every version stays; the archive is one more, with its reason; plus an audit row saying
    # who, why and when.
    versions = fetch(
        fresh_db,
        "SELECT version, reason, config->>'status' AS status FROM experiment_versions "
        "WHERE experiment = 'gone' ORDER BY version",
    )
    assert versions == [
        {"version": 1, "reason": "created", "status": "running"},
        {"version": 2, "reason": "wrong model", "status": "archived"},
    ]
    (audit,) = fetch(
        fresh_db,
        "SELECT ts, action, source, recommendation, inputs, from_version, to_version "
        "FROM decisions WHERE experiment = 'gone' AND action = 'archive'",
    )
    assert audit["source"] == "admin" and audit["recommendation"] == "wrong model"
    assert (audit["from_version"], audit["to_version"]) == (1, 2)
    inputs = json.loads(audit["inputs"])
    assert inputs["actor"] == "alice" and inputs["status_before"] == "running"
    assert inputs["peer"].startswith("ipv4:127.0.0.1:")
    assert audit["ts"] is not None


def test_archive_without_a_valid_token_is_unauthenticated_and_changes_nothing(
    ev: InProcessEvaluator,
) -> None:
    version = ev.server.publisher.version
    with grpc.insecure_channel(ev.target) as channel:
        admin = cpb_grpc.EvaluatorAdminStub(channel)
        for method in (admin.Archive, admin.Unarchive):
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                code = rpc_code(
                    method, cpb.ExperimentRequest(name="gone"), metadata=metadata, timeout=5
                )
                assert code == grpc.StatusCode.UNAUTHENTICATED
    view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="gone"))
    assert (view.status, view.version) == ("running", 1)
    assert ev.server.publisher.version == version


@pytest.mark.parametrize("method", ["Promote", "Rollback", "Pause", "Resume", "Archive"])
def test_operations_on_an_archived_experiment_are_refused(
    ev: InProcessEvaluator, method: str
) -> None:
    ev.admin.call("Archive", cpb.ExperimentRequest(name="gone"))
    version = ev.server.publisher.version
    with pytest.raises(grpc.RpcError) as info:
        ev.admin.call(method, cpb.ExperimentRequest(name="gone", arm="treatment"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert "'gone' is" in details and "archived" in details
    view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="gone"))
    assert (view.status, view.version) == ("archived", 2), "a refused call changes nothing"
    assert ev.server.publisher.version == version


def test_archive_errors_and_the_name_stays_taken(
    ev: InProcessEvaluator, models: tuple[str, str]
) -> None:
    assert rpc_code(ev.admin.call, "Archive", cpb.ExperimentRequest(name="nope")) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert rpc_code(ev.admin.call, "Archive", cpb.ExperimentRequest(name="")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert rpc_code(ev.admin.call, "Unarchive", cpb.ExperimentRequest(name="keep")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    ev.admin.call("Archive", cpb.ExperimentRequest(name="gone"))
    with pytest.raises(grpc.RpcError) as info:
        ev.admin.call(
            "CreateExperiment",
            cpb.CreateExperimentRequest(definition=ab_definition("gone", models[1], models[0])),
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert details.startswith("definition.name: experiment 'gone' already exists")
    assert "archived" in details
    too_long = cpb.ExperimentRequest(name="keep", actor="x" * 257)
    assert rpc_code(ev.admin.call, "Archive", too_long) == grpc.StatusCode.INVALID_ARGUMENT


def test_the_tick_ignores_archived_experiments(ev: InProcessEvaluator, fresh_db: str) -> None:
    stale = ev.server.latest["gone"]  # what a tick running during the archive would hold
    ev.admin.call("Archive", cpb.ExperimentRequest(name="gone"))
    (archived_at,) = fetch(
        fresh_db, "SELECT max(id) AS id FROM decisions WHERE experiment = 'gone'"
    )
    for _ in range(2):
        decided = ev.call(ev.server.tick())
        assert [name for name, _ in decided] == ["keep"]
    # A verdict computed before the archive is not written after it (audit_interval is 0, so
    # it would be otherwise).
    ev.call(ev.server._record(stale, Decision("continue", "continue: too few rows"), 0.0))
    after = fetch(
        fresh_db,
        "SELECT experiment, action FROM decisions WHERE id > $1 ORDER BY id",
        archived_at["id"],
    )
    assert after and {r["experiment"] for r in after} == {"keep"}


def test_unarchive_brings_back_its_salt_and_buckets(ev: InProcessEvaluator) -> None:
    ev.admin.call("Promote", cpb.ExperimentRequest(name="keep", arm="treatment"))
    for name in ("gone", "keep"):
        before = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name=name))
        ev.admin.call("Archive", cpb.ExperimentRequest(name=name))
        assert name not in _names(ev.server.publisher.current)
        view = ev.admin.call("Unarchive", cpb.ExperimentRequest(name=name, reason="mistake"))
        # A running experiment comes back paused (resume restarts its policy); others as they
        # were. The snapshot serves it with the same salt and exact bucket ranges as before.
        expected = "paused" if before.status == "running" else before.status
        assert view.status == expected
        assert view.definition == before.definition
        ranges = json.loads(before.details_json)["allocation"]["ranges"]
        assert json.loads(view.details_json)["allocation"]["ranges"] == ranges
        assert ev.server.publisher.current is not None
        served = {x.name: x for x in ev.server.publisher.current.experiments}[name]
        assert served.salt == before.definition.salt
        assert {a.name: [[r.start, r.end] for r in a.ranges] for a in served.arms} == ranges
    resumed = ev.admin.call("Resume", cpb.ExperimentRequest(name="gone"))
    assert resumed.status == "running"


def test_unarchive_refuses_an_experiment_whose_model_left_the_store(
    fresh_db: str, demo_store: DemoStore, tmp_path: Path, models: tuple[str, str]
) -> None:
    """The evaluator's own store copy (hard links: the same bytes) loses a model while the
    experiment is archived: unarchive fails NOT_FOUND naming the field and changes nothing."""
    store = tmp_path / "store"
    for sub in ("meta", "objects"):
        (store / sub).mkdir(parents=True)
        for f in (demo_store.root / sub).iterdir():
            os.link(f, store / sub / f.name)
    e = InProcessEvaluator(evaluator_settings(fresh_db, store, tick_interval=3600))
    try:
        e.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=ab_definition("x", *models))
        )
        e.admin.call("Archive", cpb.ExperimentRequest(name="x"))
        version = e.server.publisher.version
        (store / "meta" / f"{models[1]}.json").unlink()
        with pytest.raises(grpc.RpcError) as info:
            e.admin.call("Unarchive", cpb.ExperimentRequest(name="x"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == (
            f"definition.arms[1].model: no model {models[1]!r} in the store"
        )
        view = e.admin.call("GetExperiment", cpb.ExperimentRequest(name="x"))
        assert (view.status, view.version) == ("archived", 2)
        assert e.server.publisher.version == version
    finally:
        e.close()


def test_the_audit_row_names_the_client_certificate_under_mtls(
    request: pytest.FixtureRequest, fresh_db: str, demo_store: DemoStore, models: tuple[str, str]
) -> None:
    pki: Path = request.getfixturevalue("_pki")
    e = InProcessEvaluator(
        evaluator_settings(
            fresh_db,
            demo_store.root,
            tls_cert=pki / "server.pem",
            tls_key=pki / "server.key",
            tls_client_ca=pki / "ca.pem",
        )
    )
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        with grpc.secure_channel(e.target, creds) as channel:
            admin = cpb_grpc.EvaluatorAdminStub(channel)
            admin.CreateExperiment(
                cpb.CreateExperimentRequest(definition=ab_definition("exp", *models)),
                metadata=metadata,
                timeout=10,
            )
            admin.Archive(cpb.ExperimentRequest(name="exp"), metadata=metadata, timeout=10)
        (audit,) = fetch(fresh_db, "SELECT inputs FROM decisions WHERE action = 'archive'")
        assert json.loads(audit["inputs"])["identity"] == "client"
    finally:
        e.close()


def test_archived_experiments_have_no_metric_series(ev: InProcessEvaluator) -> None:
    from evaluator.metrics import EvaluatorCollector

    def labelled() -> set[str]:
        return {
            s.labels["experiment"]
            for family in EvaluatorCollector(ev.server).collect()
            if family.name.startswith("abgate_experiment_")
            for s in family.samples
        }

    ev.call(ev.server.tick())
    assert labelled() == {"gone", "keep"}
    ev.admin.call("Archive", cpb.ExperimentRequest(name="gone"))
    assert labelled() == {"keep"}
