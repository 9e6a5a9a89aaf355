"""The evaluator's read-only token (--read-token): it reads (lists, results, history, gateways,
the dashboard's data, questions) over gRPC, HTTP and the CLI, and every write answers
PERMISSION_DENIED / 403 before anything runs or changes; the admin token still does
everything, and a wrong token is still UNAUTHENTICATED / 401."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from evaluator.http import ENDPOINTS
from evaluator.service import ADMIN, READ, READ_METHODS, TokenAuth
from tests.conftest import DemoStore
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.test_http_api import Http

READ_TOKEN = "viewer-token-7c2d"


def test_token_roles() -> None:
    auth = TokenAuth(TOKEN, READ_TOKEN)
    admin = [("authorization", f"Bearer {TOKEN}")]
    reader = [("authorization", f"Bearer {READ_TOKEN}".encode())]
    assert auth.role(admin) == ADMIN and auth.role(reader) == READ
    assert auth.role([]) is None and auth.role([("authorization", "Bearer nope")]) is None
    assert auth.role(admin + reader) is None  # two headers: refused, whichever holds what
    for method in READ_METHODS:
        assert auth.permits(method, admin) and auth.permits(method, reader)
    for write in ("/abgate.v1.EvaluatorAdmin/Promote", "/abgate.v1.ConfigStream/StreamConfig"):
        assert auth.permits(write, admin) and not auth.permits(write, reader)
    assert not auth.permits(next(iter(READ_METHODS)), [])
    # Without a read token only the admin token is anything.
    only = TokenAuth(TOKEN)
    assert only.role(admin) == ADMIN and only.role([("authorization", "Bearer ")]) is None
    with pytest.raises(ValueError, match="differ"):
        TokenAuth(TOKEN, TOKEN)


@dataclass
class Viewer:
    ev: InProcessEvaluator
    http: Http
    shas: dict[str, str]


@pytest.fixture
def viewer(fresh_db: str, demo_store: DemoStore) -> Iterator[Viewer]:
    settings = evaluator_settings(
        fresh_db, demo_store.root, http_listen="127.0.0.1:0", tick_interval=3600, settle=0.0,
        read_token=READ_TOKEN,
    )  # fmt: skip
    ev = InProcessEvaluator(settings)
    try:
        shas = {m.id: m.sha256 for m in demo_store.metas.values()}
        definition = ab_definition("exp", shas["demo-logreg"], shas["demo-gbdt"])
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
        yield Viewer(ev, Http(ev.server.http_port, token=READ_TOKEN), shas)
    finally:
        ev.close()


def _code(call: object, request: object, token: str) -> grpc.StatusCode:
    try:
        call(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _history(ev: InProcessEvaluator) -> int:
    got = ev.admin.call("History", cpb.HistoryRequest(name="exp"))
    return len(got.entries)


def test_grpc_reads_pass_and_writes_are_permission_denied(viewer: Viewer) -> None:
    ev = viewer.ev
    before = _history(ev)
    with grpc.insecure_channel(ev.target) as channel:
        admin = cpb_grpc.EvaluatorAdminStub(channel)
        exp = cpb.ExperimentRequest(name="exp")
        reads = {
            admin.ListExperiments: cpb.ListExperimentsRequest(),
            admin.GetExperiment: exp,
            admin.Gateways: cpb.GatewaysRequest(),
            admin.History: cpb.HistoryRequest(name="exp"),
        }
        assert len(reads) == len(READ_METHODS)
        for call, request in reads.items():
            assert _code(call, request, READ_TOKEN) == grpc.StatusCode.OK
        writes = {
            admin.CreateExperiment: cpb.CreateExperimentRequest(),
            admin.Promote: cpb.ExperimentRequest(name="exp", arm="treatment"),
            admin.Rollback: exp,
            admin.Pause: exp,
            admin.Resume: exp,
            admin.Archive: exp,
            admin.Unarchive: exp,
            admin.UpdateExperiment: exp,
            admin.AdvanceCanary: exp,
            admin.RequestRetrain: cpb.RequestRetrainRequest(experiment="exp"),
            admin.StartRound: cpb.StartRoundRequest(experiment="exp"),
            admin.Approve: exp,
        }
        for call, request in writes.items():
            assert _code(call, request, READ_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
            assert _code(call, request, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        # A gateway's config stream (its ACKs change state) needs the admin token too.
        stream = cpb_grpc.ConfigStreamStub(channel).StreamConfig(
            iter([cpb.ConfigRequest(node_id="gw-viewer")]),
            metadata=(("authorization", f"Bearer {READ_TOKEN}"),),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "read-only" in (info.value.details() or "")
        # The admin token still does everything.
        promoted = admin.Promote(
            cpb.ExperimentRequest(name="exp", arm="treatment"),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=10,
        )
    assert promoted.status == "promoted"
    assert "gw-viewer" not in ev.server.publisher.gateways
    # Nothing the read token tried left an audit row: only the admin's promote did.
    assert _history(ev) == before + 1


def test_http_reads_pass_and_every_write_is_403_before_its_body_is_read(viewer: Viewer) -> None:
    ev, http = viewer.ev, viewer.http
    before = _history(ev)
    paths = {"name": "exp", "experiment": "exp", "shadow": "s"}
    writes = [e for e in ENDPOINTS if e.writes]
    assert {e.method for e in writes} == {"POST", "PATCH", "DELETE"}
    for e in ENDPOINTS:
        path = e.path.format(**paths)
        if e.writes:
            # Not even a body that is not JSON is looked at: 403 comes first.
            got = http(e.method, path, raw=b"{not json")
            assert got.status == 403, (e.method, e.path, got.doc)
            assert got.doc["error"]["status"] == "PERMISSION_DENIED"
            assert "read-only" in got.doc["error"]["message"]
            assert http(e.method, path, raw=b"{}", token="wrong").status == 401
        elif e.method == "GET":
            got = http("GET", path)
            expected = 409 if "/canary/" in e.path else 200  # "exp" is an A/B test
            assert got.status == expected, (e.path, got.doc)
    asked = http("POST", "/nlq", {"question": "compare control and treatment in exp"})
    assert asked.status == 200 and "recommendation" in asked.doc
    test = {"control": {"n": 100, "mean": 0.5, "sd": 0.5},
            "treatment": {"n": 100, "mean": 0.6, "sd": 0.49}}  # fmt: skip
    assert http("POST", "/stat_test", test).status == 200
    # The dashboard's data is readable with the read token.
    assert http("GET", "/api/v1/experiments/exp/timeline").status == 200
    # Nothing changed, and the admin token still writes over HTTP.
    assert _history(ev) == before
    assert http("POST", "/api/v1/experiments/exp/pause", {}, token=TOKEN).status == 200


def test_the_cli_reads_with_the_read_token_and_a_write_exits_1(viewer: Viewer) -> None:
    def abgate(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"ABGATE_TOKEN": READ_TOKEN, "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, "-m", "abgate", "experiments", *args, "--evaluator", viewer.ev.target],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    listed = abgate("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["definition"]["name"] for e in json.loads(listed.stdout)] == ["exp"]
    promoted = abgate("promote", "exp", "--arm", "treatment")
    assert promoted.returncode == 1
    assert promoted.stderr.startswith("abgate: error: PERMISSION_DENIED")


def test_the_evaluator_refuses_a_read_token_equal_to_the_admin_one(tmp_path: object) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "evaluator", "--listen", "127.0.0.1:0",
         "--token", "same-token", "--read-token", "same-token"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--read-token must differ" in r.stderr


def test_an_endpoint_that_reaches_a_write_with_the_read_token_is_refused_underneath(
    viewer: Viewer,
) -> None:
    """``HttpApi.rpc`` applies the gRPC rule itself: even an endpoint wrongly marked as a read
    cannot reach a write of the admin API with the read token."""
    from starlette.requests import Request

    from evaluator.http import HttpAbort, HttpApi
    from evaluator.service import AdminServicer

    api = HttpApi(AdminServicer(viewer.ev.server), viewer.ev.server.auth, lambda: None)
    scope = {"type": "http", "client": ("127.0.0.1", 1), "headers": [], "abgate.role": READ}
    request = cpb.ExperimentRequest(name="exp", arm="treatment")
    with pytest.raises(HttpAbort) as info:
        viewer.ev.call(api.rpc("Promote", request, Request(scope)))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    got = viewer.ev.call(api.rpc("GetExperiment", request, Request(scope)))
    assert got.status == "running"
