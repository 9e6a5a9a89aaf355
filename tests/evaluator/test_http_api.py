"""The evaluator's HTTP/JSON API (--http-listen) on a real evaluator and PostgreSQL, over real
HTTP: the same calls, validation, audit rows and errors as the gRPC admin API (one code path),
errors as JSON with the HTTP status of their gRPC status, the bearer token on everything but the
OpenAPI document and /healthz, and the paths users of other A/B services call."""

from __future__ import annotations

import asyncio
import http.client as http_client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from evaluator.http import ENDPOINTS, HTTP_STATUS, MAX_BODY
from evaluator.service import view_json
from evaluator.stats import ArmStats, fixed_horizon_t_test, sequential_test
from tests.conftest import DemoStore
from tests.evaluator.conftest import (
    TOKEN,
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    fetch,
)
from tests.evaluator.test_drift import _rows, insert_rows

CLI_ENV = {"ABGATE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}


@dataclass
class Answer:
    status: int
    doc: Any
    headers: dict[str, str]


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class Http:
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = "",
        content_type: str = "application/json",
    ) -> Answer:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        use = self.token if token == "" else token
        if use is not None:
            req.add_header("Authorization", f"Bearer {use}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Answer(r.status, json.loads(r.read() or b"null"), _lower(r.headers))
        except urllib.error.HTTPError as exc:
            text = exc.read()
            return Answer(exc.code, json.loads(text), _lower(exc.headers))


@dataclass
class Api:
    ev: InProcessEvaluator
    http: Http
    shas: dict[str, str]


@pytest.fixture
def api(fresh_db: str, demo_store: DemoStore) -> Iterator[Api]:
    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, http_listen="127.0.0.1:0", tick_interval=3600, settle=0.0
        )
    )
    try:
        assert ev.server.http_port > 0
        yield Api(
            ev, Http(ev.server.http_port), {m.id: m.sha256 for m in demo_store.metas.values()}
        )
    finally:
        ev.close()


def _definition(api: Api, name: str = "exp", **kw: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    d = ab_definition(name, api.shas["demo-logreg"], api.shas["demo-gbdt"], **kw)
    return json_format.MessageToDict(d, preserving_proto_field_name=True)


def _grpc_error(fn: Any, *args: Any) -> grpc.RpcError:
    try:
        fn(*args)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("no error")


def test_openapi_and_health_need_no_token_and_the_rest_does(api: Api) -> None:
    doc = api.http("GET", "/openapi.json", token=None)
    assert doc.status == 200 and doc.doc["openapi"].startswith("3.")
    for e in ENDPOINTS:
        assert e.method.lower() in doc.doc["paths"][e.path], e.path
    schemas = doc.doc["components"]["schemas"]
    assert "arms" in schemas["ExperimentDefinition"]["properties"]
    assert schemas["ExperimentDefinition"]["properties"]["kind"]["enum"][:3] == [
        "EXPERIMENT_KIND_UNSPECIFIED", "AB", "CANARY"
    ]  # fmt: skip
    assert api.http("GET", "/healthz", token=None).doc == {"status": "serving"}
    for token in (None, "wrong"):
        got = api.http("GET", "/api/v1/experiments", token=token)
        assert got.status == 401 and got.doc["error"]["status"] == "UNAUTHENTICATED"
        assert got.headers["www-authenticate"].startswith("Bearer")
        # Refused before the body is read or anything runs.
        got = api.http("POST", "/api/v1/experiments", _definition(api), token=token)
        assert got.status == 401
    assert api.ev.admin.call("ListExperiments", cpb.ListExperimentsRequest()).experiments == []


def test_experiments_through_http_are_the_grpc_calls(api: Api, fresh_db: str) -> None:
    http = api.http
    made = http("POST", "/api/v1/experiments", _definition(api))
    assert made.status == 201, made.doc
    grpc_view = view_json(api.ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")))
    assert made.doc["definition"] == grpc_view["definition"]
    got = http("GET", "/api/v1/experiments/exp")
    assert got.status == 200 and got.doc == grpc_view
    assert [e["definition"]["name"] for e in http("GET", "/api/v1/experiments").doc[
        "experiments"
    ]] == ["exp"]  # fmt: skip
    # The same validation and message as gRPC: a bad definition, a taken name, unknown names.
    bad = _definition(api, "bad")
    bad["arms"][1]["weight"] = 70.0
    got = http("POST", "/api/v1/experiments", {"definition": bad})
    exc = _grpc_error(
        api.ev.admin.call,
        "CreateExperiment",
        cpb.CreateExperimentRequest(
            definition=ab_definition("bad", api.shas["demo-logreg"], api.shas["demo-gbdt"],
                                     weights=(50.0, 70.0))
        ),
    )  # fmt: skip
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert got.status == 400 and got.doc["error"] == {
        "code": 400, "status": "INVALID_ARGUMENT", "message": exc.details()
    }  # fmt: skip
    again = http("POST", "/api/v1/experiments", _definition(api))
    assert again.status == HTTP_STATUS[grpc.StatusCode.ALREADY_EXISTS] == 409
    assert "already exists" in again.doc["error"]["message"]
    missing = http("GET", "/api/v1/experiments/nope")
    assert missing.status == 404 and missing.doc["error"]["status"] == "NOT_FOUND"
    # Operations: the state machine's refusals are 409, each call audited with its actor.
    paused = http("POST", "/api/v1/experiments/exp/pause", {"reason": "look", "actor": "ana"})
    assert paused.status == 200 and paused.doc["status"] == "paused"
    twice = http("POST", "/api/v1/experiments/exp/pause")
    assert twice.status == 409 and twice.doc["error"]["status"] == "FAILED_PRECONDITION"
    assert http("POST", "/api/v1/experiments/exp/resume").doc["status"] == "running"
    (audit,) = fetch(
        fresh_db, "SELECT recommendation, inputs::text AS i FROM decisions WHERE action = 'pause'"
    )
    assert audit["recommendation"] == "look" and json.loads(audit["i"])["actor"] == "ana"
    assert json.loads(audit["i"])["peer"].startswith("http:127.0.0.1:")
    changed = http("PATCH", "/api/v1/experiments/exp", {"feature_sample_rate": 0.25})
    assert changed.status == 200 and changed.doc["definition"]["feature_sample_rate"] == 0.25
    nothing = http("PATCH", "/api/v1/experiments/exp", {})
    assert nothing.status == 400 and "nothing to update" in nothing.doc["error"]["message"]
    other = http("POST", "/api/v1/experiments/exp/promote", {"name": "other", "arm": "control"})
    assert other.status == 400 and "the path 'exp'" in other.doc["error"]["message"]
    # The compatible paths are the same calls.
    promoted = http("POST", "/api/v1/ab-tests/exp/promote", {"arm": "treatment"})
    assert promoted.status == 200 and promoted.doc["weights"] == {
        "control": 0.0, "treatment": 100.0
    }  # fmt: skip
    assert http("GET", "/api/v1/ab-tests/exp").doc["status"] == "promoted"
    assert http("GET", "/api/v1/ab-tests").doc["experiments"][0]["status"] == "promoted"
    rolled = http("POST", "/api/v1/ab-tests/exp/rollback", {"reason": "incident"})
    assert rolled.doc["weights"] == {"control": 100.0, "treatment": 0.0}
    steps = http("GET", "/api/v1/experiments/exp/history?steps_only=true")
    assert [e["action"] for e in steps.doc["entries"]] == [
        "create", "pause", "resume", "update", "promote", "rollback"
    ]  # fmt: skip
    assert http("GET", "/api/v1/experiments/exp/history?limit=x").status == 400


def test_bodies_that_are_not_requests_get_a_clear_400(api: Api) -> None:
    http = api.http
    cases = [
        (b"{not json", "application/json", 400, "the body is not JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object, not list"),
        (json.dumps({"bogus": 1}).encode(), "application/json", 400, "bogus"),
        (b'{"name": "x"}', "text/plain", 415, "application/json"),
    ]
    for raw, kind, status, text in cases:
        got = http("POST", "/api/v1/experiments", raw=raw, content_type=kind)
        assert got.status == status, (raw[:20], got.doc)
        assert text in got.doc["error"]["message"], got.doc
    # A body over MAX_BODY is refused on its Content-Length, before it is read.
    conn = http_client.HTTPConnection("127.0.0.1", api.ev.server.http_port, timeout=30)
    conn.putrequest("POST", "/api/v1/experiments")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    large = conn.getresponse()
    assert large.status == 413 and "larger than" in json.loads(large.read())["error"]["message"]
    conn.close()
    wrong_type = http("POST", "/api/v1/experiments", {"name": "x", "arms": "many"})
    assert wrong_type.status == 400 and "arms" in wrong_type.doc["error"]["message"]
    assert http("GET", "/nowhere").status == 404
    nowhere = http("DELETE", "/api/v1/experiments")
    assert nowhere.status == 405 and nowhere.doc["error"]["status"] == "METHOD_NOT_ALLOWED"
    nul = http("POST", "/api/v1/experiments", {"name": "a\u0000b"})
    assert nul.status == 400 and nul.doc["error"]["status"] == "INVALID_ARGUMENT"
    assert api.ev.admin.call("ListExperiments", cpb.ListExperimentsRequest()).experiments == []


def test_results_canary_config_and_gateways(api: Api, fresh_db: str) -> None:
    http = api.http
    assert http("POST", "/api/v1/experiments", _definition(api)).status == 201
    rng = np.random.default_rng(5)
    insert_rows(fresh_db, "exp", "control", _rows(rng, 300, 2.0, 5.0, 0))
    insert_rows(fresh_db, "exp", "treatment", _rows(rng, 300, 2.0, 5.0, 1000))
    api.ev.call(api.ev.server.tick())
    results = http("GET", "/api/v1/experiments/exp/results")
    assert results.status == 200
    arms = results.doc["arms"]
    assert set(arms) == {"control", "treatment"}
    view = view_json(api.ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")))
    assert arms == view["details"]["statistics"]["arms"]
    assert results.doc["srm"] == view["details"]["statistics"]["srm"]
    assert results.doc["verdict"]["recommendation"] == view["verdict"]["recommendation"]
    assert http("GET", "/api/v1/ab-tests/exp/results").doc == results.doc
    # Over time, from the results model the report reads.
    from evaluator.dashboard import timeline_json
    from evaluator.results import load_results, metric_series

    line = http("GET", "/api/v1/experiments/exp/timeline?bucket_seconds=60")
    assert line.status == 200 and line.doc["arms"] == ["control", "treatment"]
    data = asyncio.run(load_results(fresh_db, "exp", 60.0))
    assert (
        line.doc["served"]
        == json.loads(json.dumps(timeline_json(data, metric_series(data))))["served"]
    )
    assert sum(sum(x or 0 for x in v) for v in line.doc["served"].values()) == 600
    # Each arm's mean with its always-valid interval (null where unbounded: no variance yet).
    want = json.loads(json.dumps(timeline_json(data, metric_series(data))))
    for arm in ("control", "treatment"):
        doc = line.doc
        assert doc["mean_lo"][arm] == want["mean_lo"][arm] and len(doc["mean_lo"][arm]) == len(
            doc["ends"]
        )
        bounded = [(lo, m, hi) for lo, m, hi in zip(doc["mean_lo"][arm], doc["mean"][arm],
                   doc["mean_hi"][arm], strict=True) if lo is not None]  # fmt: skip
        assert all(lo < m < hi for lo, m, hi in bounded), arm
    assert line.doc["mean_confidence"] == pytest.approx(0.95)
    assert {a: max(x for x in v if x is not None) for a, v in line.doc["split"].items()} == {
        "control": 50.0, "treatment": 50.0
    }  # fmt: skip
    assert http("GET", "/api/v1/experiments/exp/timeline?bucket_seconds=-1").status == 400
    assert http("GET", "/api/v1/experiments/nope/timeline").status == 404
    # A canary's stage; an A/B test is not one.
    ab = http("GET", "/api/v1/canary/exp")
    assert ab.status == 409 and "not a canary" in ab.doc["error"]["message"]
    made = http("POST", "/api/v1/experiments", _definition(api, "can", kind=cpb.CANARY))
    assert made.status == 201, made.doc
    canary = http("GET", "/api/v1/canary/can")
    assert canary.status == 200
    assert (canary.doc["stage"], canary.doc["share"]) == (0, 1.0)
    assert canary.doc["weights"] == {"control": 99.0, "treatment": 1.0}
    # The snapshot gateways run, whole or one experiment's.
    config = http("GET", "/experiment/config")
    assert config.status == 200
    assert config.doc["version"] == api.ev.server.publisher.version
    assert sorted(e["name"] for e in config.doc["experiments"]) == ["can", "exp"]
    one = http("GET", "/experiment/config?experiment=can")
    assert one.doc["experiment"]["name"] == "can"
    assert http("GET", "/experiment/config?experiment=zzz").status == 404
    gws = http("GET", "/api/v1/gateways")
    assert gws.status == 200 and gws.doc["snapshot_version"] == api.ev.server.publisher.version


def test_stat_test_is_the_policies_test_on_given_figures(api: Api) -> None:
    body = {"control": {"n": 5000, "successes": 500}, "treatment": {"n": 5000, "successes": 600}}
    got = api.http("POST", "/stat_test", body)
    assert got.status == 200, got.doc
    c, t = ArmStats(5000, 500.0, 500.0), ArmStats(5000, 600.0, 600.0)
    seq = sequential_test(c, t, 0.05)
    _, p_fixed, _ = fixed_horizon_t_test(c, t, 0.05)
    assert got.doc["effect_size"] == pytest.approx(0.02)
    assert got.doc["sequential"]["p_value"] == pytest.approx(seq.p_value, rel=1e-9)
    assert got.doc["fixed_horizon"]["p_value"] == pytest.approx(p_fixed, rel=1e-9)
    assert got.doc["winner"] == ("treatment" if seq.significant else None)
    means = {"control": {"n": 100, "mean": 1.0, "sd": 0.5},
             "treatment": {"n": 100, "mean": 1.1, "sd": 0.5}}  # fmt: skip
    got = api.http("POST", "/stat_test", means)
    assert got.doc["arms"]["control"]["variance"] == pytest.approx(0.25)
    for bad, field in (
        ({"control": {"n": 10, "successes": 11}, "treatment": body["treatment"]}, "successes"),
        ({"control": {"n": -1, "successes": 0}, "treatment": body["treatment"]}, "control.n"),
        ({"control": body["control"]}, "treatment"),
        ({**body, "alpha": 2}, "alpha"),
        ({**body, "extra": 1}, "extra"),
        ({"control": {"n": 5, "mean": 1.0}, "treatment": body["treatment"]}, "control"),
    ):
        got = api.http("POST", "/stat_test", bad)
        assert got.status == 400 and field in got.doc["error"]["message"], (bad, got.doc)


def test_the_evaluator_serves_http_from_the_command_line(
    fresh_db: str, demo_store: DemoStore, tmp_path: Any
) -> None:
    """`abgate evaluator --http-listen` and curl, as a user would; a bad address is exit 2."""
    from abgate.addresses import free_port
    from abgate.demo import wait_serving

    bad = subprocess.run(
        [sys.executable, "-m", "abgate", "evaluator", "--http-listen", "nowhere", "--token", "t",
         "--database-url", fresh_db, "--model-store", str(demo_store.root)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--http-listen" in bad.stderr
    grpc_port, http_port = free_port(), free_port()
    env = {"ABGATE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "abgate", "evaluator", "--listen", f"127.0.0.1:{grpc_port}",
         "--http-listen", f"127.0.0.1:{http_port}", "--database-url", fresh_db,
         "--model-store", str(demo_store.root)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", timeout=60, proc=proc)  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{http_port}"
        curl = ["curl", "-sS", "-H", f"Authorization: Bearer {TOKEN}"]
        body = json.dumps(
            {"name": "c", "kind": "AB", "arms": [
                {"name": "control", "model": demo_store.metas["demo-logreg"].sha256, "weight": 50},
                {"name": "treatment", "model": demo_store.metas["demo-gbdt"].sha256, "weight": 50},
            ]}
        )  # fmt: skip
        made = subprocess.run(
            [*curl, "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
             "-w", "\n%{http_code}", f"{base}/api/v1/ab-tests"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        text, code = made.stdout.rsplit("\n", 1)
        assert code == "201", made.stdout + made.stderr
        assert json.loads(text)["status"] == "running"
        listed = subprocess.run([*curl, f"{base}/api/v1/experiments"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert [e["definition"]["name"] for e in json.loads(listed.stdout)["experiments"]] == ["c"]
        denied = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/api/v1/experiments"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert denied.stdout == "401"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""


def test_canary_advance_and_shadows_over_http_grpc_and_the_cli(
    api: Api, fresh_db: str, demo_store: DemoStore
) -> None:
    from evaluator.experiments import CANARY_STAGES

    http = api.http
    assert http("POST", "/api/v1/experiments", _definition(api, "can", kind=cpb.CANARY)).status
    assert http("POST", "/api/v1/experiments", _definition(api)).status == 201
    # By hand, a stage at a time: HTTP (both paths), gRPC, the CLI; the last one promotes.
    one = http("POST", "/api/v1/canary/can/advance", {"reason": "looks fine", "actor": "ana"})
    assert one.status == 200 and one.doc["details"]["canary_stage"] == 1
    assert one.doc["weights"] == {
        "control": 100.0 - CANARY_STAGES[1],
        "treatment": CANARY_STAGES[1],
    }
    two = http("POST", "/api/v1/experiments/can/advance")
    assert two.doc["details"]["canary_stage"] == 2
    view = api.ev.admin.call("AdvanceCanary", cpb.ExperimentRequest(name="can"))
    assert view.status == "running" and dict(view.weights)["treatment"] == CANARY_STAGES[3]
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "experiments", "advance", "can", "--evaluator",
         api.ev.target, "--reason", "ship it"],
        capture_output=True, text=True, timeout=60, env=CLI_ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "can: running" in r.stdout and f"treatment={CANARY_STAGES[4]:g}%" in r.stdout
    done = http("POST", "/api/v1/canary/can/advance")  # the last stage: promoted
    assert done.doc["status"] == "promoted" and done.doc["weights"]["treatment"] == 100.0
    over = http("POST", "/api/v1/canary/can/advance")
    assert over.status == 409 and "is promoted" in over.doc["error"]["message"]
    ab = http("POST", "/api/v1/canary/exp/advance")
    assert ab.status == 409 and "not a canary" in ab.doc["error"]["message"]
    audits = fetch(
        fresh_db,
        "SELECT source, recommendation FROM decisions WHERE experiment = 'can'"
        " AND action IN ('advance', 'promote') ORDER BY id",
    )
    assert [(a["source"], a["recommendation"]) for a in audits] == [
        ("admin", "looks fine"), ("admin", ""), ("admin", ""), ("admin", "ship it"), ("admin", "")
    ]  # fmt: skip

    # Shadows: started and stopped in place, the model pinned to its sha256 as at create.
    forest = demo_store.metas["demo-forest"]
    s1 = {"experiment": "exp", "name": "s1", "model": forest.id, "sample_rate": 0.5}
    started = http("POST", "/api/v1/shadow", s1)
    assert started.status == 201, started.doc
    assert started.doc["definition"]["shadows"] == [
        {"name": "s1", "model": forest.sha256, "sample_rate": 0.5}
    ]
    snapshot = http("GET", "/experiment/config?experiment=exp").doc["experiment"]
    assert [s["name"] for s in snapshot["shadows"]] == ["s1"]
    for body, status, text in (
        ({"experiment": "exp", "name": "s1", "model": forest.id}, 400, "already an arm or shadow"),
        ({"experiment": "exp", "name": "control", "model": forest.id}, 400, "already an arm"),
        ({"experiment": "exp", "name": "s2", "model": "no-such-model"}, 404,
         "add_shadows[0].model"),
        ({"experiment": "exp", "name": "s2", "model": forest.id, "sample_rate": 2}, 400,
         "add_shadows[0].sample_rate"),
        ({"name": "s2", "model": forest.id}, 400, "experiment"),
    ):  # fmt: skip
        got = http("POST", "/api/v1/shadow", body)
        assert got.status == status and text in got.doc["error"]["message"], (body, got.doc)
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "experiments", "update", "exp", "--evaluator",
         api.ev.target, "--add-shadow", f"s2={forest.id}@0.25", "--remove-shadow", "s1"],
        capture_output=True, text=True, timeout=60, env=CLI_ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    view = api.ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
    assert [(s.name, s.sample_rate) for s in view.definition.shadows] == [("s2", 0.25)]
    stopped = http("DELETE", "/api/v1/shadow/exp/s2")
    assert stopped.status == 200 and stopped.doc["definition"]["shadows"] == []
    again = http("DELETE", "/api/v1/shadow/exp/s2")
    assert again.status == 404 and "has no shadow 's2'" in again.doc["error"]["message"]


def test_a_shadow_started_over_http_is_mirrored_by_a_running_gateway(
    api: Api, fresh_db: str, demo_store: DemoStore, tmp_path: Any
) -> None:
    from tests.conftest import InProcessGateway, gateway_settings
    from tests.evaluator.test_canary_e2e import drive

    assert api.http("POST", "/api/v1/experiments", _definition(api, "canary")).status == 201
    settings = gateway_settings(
        demo_store, tmp_path, fresh_db, config=None, evaluator=api.ev.target,
        evaluator_token=TOKEN, gateway_id="gw-shadow",
    )  # fmt: skip
    gw = InProcessGateway(settings)
    try:
        publisher = api.ev.server.publisher
        assert api.ev.call(publisher.wait_acked(publisher.version, timeout=10))
        forest = demo_store.metas["demo-forest"]
        body = {"experiment": "canary", "name": "forest", "model": forest.id}
        assert api.http("POST", "/api/v1/shadow", body).status == 201
        assert api.ev.call(publisher.wait_acked(publisher.version, timeout=10))
        served = drive(gw, demo_store.X, 50)
        assert sum(served.values()) == 50 and set(served) <= {"control", "treatment"}
        writer = gw.server.logwriter
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = fetch(
                fresh_db, "SELECT count(*) AS n FROM predictions WHERE shadow AND arm = 'forest'"
            )
            if not writer.queued and rows[0]["n"] == 50:
                break
            time.sleep(0.05)
        assert rows[0]["n"] == 50  # every request mirrored to the shadow started at run time
    finally:
        gw.close()
