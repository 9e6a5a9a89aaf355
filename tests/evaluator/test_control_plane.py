"""The control plane's front door: credentials (token, TLS, mTLS), the admin API's validation,
and the ``abgate evaluator`` / ``abgate experiments`` commands as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import (
    TOKEN,
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    rpc_code,
)


def test_calls_without_a_valid_token_are_unauthenticated_and_change_nothing(
    evaluator: InProcessEvaluator,
) -> None:
    definition = ab_definition("exp", "a" * 64, "b" * 64)
    with grpc.insecure_channel(evaluator.target) as channel:
        admin = cpb_grpc.EvaluatorAdminStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            code = rpc_code(
                admin.CreateExperiment,
                cpb.CreateExperimentRequest(definition=definition),
                metadata=metadata,
                timeout=5,
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
            for method, request in (
                ("ListExperiments", cpb.ListExperimentsRequest()),
                ("Promote", cpb.ExperimentRequest(name="exp", arm="treatment")),
                ("Gateways", cpb.GatewaysRequest()),
            ):
                code = rpc_code(getattr(admin, method), request, metadata=metadata, timeout=5)
                assert code == grpc.StatusCode.UNAUTHENTICATED, method
        stream = cpb_grpc.ConfigStreamStub(channel).StreamConfig(
            iter([cpb.ConfigRequest(node_id="intruder")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stream))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = evaluator.admin.call("ListExperiments", cpb.ListExperimentsRequest())
    assert list(listed.experiments) == []
    assert evaluator.server.publisher.gateways == {}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.arms[0].__setattr__("weight", 40.0), "definition.arms"),
        (lambda d: d.arms.pop(), "definition.arms"),
        (lambda d: d.__setattr__("name", "bad name!"), "definition.name"),
        # A regex's `$` matches before a final newline: the name must match whole.
        (lambda d: d.__setattr__("name", "exp\n"), "definition.name"),
        (lambda d: d.arms[1].__setattr__("name", "treatment\n"), "definition.arms[1].name"),
        (lambda d: d.arms[1].__setattr__("name", "control"), "definition.arms[1].name"),
        (lambda d: d.arms[1].__setattr__("model", ""), "definition.arms[1].model"),
        (lambda d: d.__setattr__("primary_metric", "revenue"), "definition.primary_metric"),
        (lambda d: d.__setattr__("confidence", 1.5), "definition.confidence"),
        (lambda d: d.guardrails.__setattr__("max_error_rate", 2.0), "definition.guardrails"),
        (lambda d: d.__setattr__("kind", 0), "definition.kind"),
    ],
)
def test_bad_definitions_are_invalid_argument_naming_the_field(
    evaluator: InProcessEvaluator, mutate: Any, field: str
) -> None:
    definition = ab_definition("exp", "a" * 64, "b" * 64)
    mutate(definition)
    with pytest.raises(grpc.RpcError) as info:
        evaluator.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()
    listed = evaluator.admin.call("ListExperiments", cpb.ListExperimentsRequest())
    assert list(listed.experiments) == []


def test_admin_operations_and_their_errors(
    evaluator: InProcessEvaluator, demo_store: DemoStore
) -> None:
    logreg, gbdt = (demo_store.metas[m].sha256 for m in ("demo-logreg", "demo-gbdt"))
    create = cpb.CreateExperimentRequest(definition=ab_definition("exp", logreg, gbdt))
    view = evaluator.admin.call("CreateExperiment", create)
    assert (view.status, view.version, dict(view.weights)) == (
        "running",
        1,
        {"control": 50.0, "treatment": 50.0},
    )
    with pytest.raises(grpc.RpcError) as info:
        evaluator.admin.call("CreateExperiment", create)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for method, request, code in (
        ("GetExperiment", cpb.ExperimentRequest(name="nope"), grpc.StatusCode.NOT_FOUND),
        ("Promote", cpb.ExperimentRequest(name="exp"), grpc.StatusCode.FAILED_PRECONDITION),
        ("Promote", cpb.ExperimentRequest(name="exp", arm="x"), grpc.StatusCode.INVALID_ARGUMENT),
        ("Resume", cpb.ExperimentRequest(name="exp"), grpc.StatusCode.FAILED_PRECONDITION),
        ("Pause", cpb.ExperimentRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        assert rpc_code(evaluator.admin.call, method, request) == code, method
    paused = evaluator.admin.call("Pause", cpb.ExperimentRequest(name="exp", reason="look"))
    assert paused.status == "paused" and paused.version == 2
    resumed = evaluator.admin.call("Resume", cpb.ExperimentRequest(name="exp"))
    assert resumed.status == "running" and resumed.version == 3
    decisions = evaluator.call(evaluator.server.store.decisions("exp"))
    assert [d["action"] for d in decisions] == ["create", "pause", "resume"]
    assert all(d["source"] == "admin" for d in decisions)


# -- TLS ---------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=abgate-test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
                 cwd=d)  # fmt: skip
    return d


def test_tls_and_mtls_config_stream(
    pki: Path, demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    from evaluator.cli import AdminClient

    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db,
            demo_store.root,
            tls_cert=pki / "server.pem",
            tls_key=pki / "server.key",
            tls_client_ca=pki / "ca.pem",
        )
    )
    ev.admin.close()
    ev.admin = AdminClient(ev.target, TOKEN, ca=pki / "ca.pem")
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    gateways: list[InProcessGateway] = []
    try:
        # mTLS: an admin client without a client certificate cannot even connect.
        with pytest.raises(grpc.RpcError) as info:
            ev.admin.call("ListExperiments", cpb.ListExperimentsRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        with grpc.secure_channel(ev.target, creds) as channel:
            admin = cpb_grpc.EvaluatorAdminStub(channel)
            view = admin.CreateExperiment(
                cpb.CreateExperimentRequest(
                    definition=ab_definition("exp", shas["demo-logreg"], shas["demo-gbdt"])
                ),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=10,
            )
        base = {
            "config": None,
            "evaluator": ev.target,
            "evaluator_token": TOKEN,
            "evaluator_ca": pki / "ca.pem",
        }
        with_cert = gateway_settings(
            demo_store, tmp_path / "a", **base, evaluator_cert=pki / "client.pem",
            evaluator_key=pki / "client.key", gateway_id="gw-mtls",
        )  # fmt: skip
        gateways.append(InProcessGateway(with_cert))
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, timeout=10))
        assert gateways[0].server.subscriber is not None
        assert gateways[0].server.subscriber.acks == 1
        # Without a client certificate the gateway never gets a snapshot (and says why).
        without = gateway_settings(demo_store, tmp_path / "b", **base, gateway_id="gw-nocert")
        gateways.append(InProcessGateway(without))
        sub = gateways[1].server.subscriber
        assert sub is not None
        import time

        deadline = time.monotonic() + 5
        while not sub.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sub.acks == 0 and sub.last_error.startswith("UNAVAILABLE")
        assert set(ev.server.publisher.gateways) == {"gw-mtls"}
    finally:
        for gw in gateways:
            gw.close()
        ev.close()


def test_the_http_listener_serves_the_same_tls_and_mtls(
    pki: Path, demo_store: DemoStore, fresh_db: str
) -> None:
    """--http-listen with --tls-cert/--tls-key/--tls-client-ca: HTTPS only, a client certificate
    required, then the bearer token as over plain HTTP."""
    import http.client as http_client
    import ssl

    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, http_listen="127.0.0.1:0", tls_cert=pki / "server.pem",
            tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
        )
    )  # fmt: skip
    port = ev.server.http_port

    def get(context: ssl.SSLContext | None, token: str | None = TOKEN) -> int:
        conn = (
            http_client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            if context is not None
            else http_client.HTTPConnection("127.0.0.1", port, timeout=10)
        )
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", "/api/v1/experiments", headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with_cert.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        assert get(with_cert) == 200
        assert get(with_cert, token=None) == 401
        # Plain HTTP to the TLS port, and TLS without a client certificate: no answer at all.
        with pytest.raises((ConnectionError, http_client.HTTPException, OSError)):
            get(None)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(anonymous)
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            get(ssl.create_default_context())
    finally:
        ev.close()


# -- CLI -----------------------------------------------------------------------------------
def abgate(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ABGATE_TOKEN"}
    if token is not None:
        env["ABGATE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "abgate", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_evaluator_refuses_to_start_without_a_token() -> None:
    r = abgate("evaluator", "--listen", "127.0.0.1:0", token=None)
    assert r.returncode == 2 and "--token" in r.stderr


def test_experiments_cli(evaluator: InProcessEvaluator, demo_store: DemoStore) -> None:
    target = ["--evaluator", evaluator.target]
    r = abgate("experiments", "create", *target, "--name", "exp",
               "--arm", "control=demo-logreg", "--arm", "treatment=demo-gbdt",
               "--min-effect", "0.01", "--max-error-rate", "0.05", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    arms = created["definition"]["arms"]
    # The evaluator pins model ids to their sha256 in its store: every gateway loads the same.
    assert [a["model"] for a in arms] == [
        demo_store.metas["demo-logreg"].sha256,
        demo_store.metas["demo-gbdt"].sha256,
    ]
    assert created["weights"] == {"control": 50.0, "treatment": 50.0}

    r = abgate("experiments", "show", "exp", *target, "--json")
    assert r.returncode == 0, r.stderr
    verdict = json.loads(r.stdout)
    assert set(verdict) == {"winner", "p_value", "effect_size", "ci", "recommendation"}

    r = abgate("experiments", "list", *target)
    assert r.returncode == 0 and r.stdout.startswith("exp: running, kind ab")

    r = abgate("experiments", "promote", "exp", *target)
    assert r.returncode == 1 and r.stderr.startswith("abgate: error: FAILED_PRECONDITION")
    r = abgate("experiments", "promote", "exp", *target, "--arm", "treatment", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "promoted"

    r = abgate("experiments", "gateways", *target, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["snapshot_version"] >= 2

    r = abgate("experiments", "list", *target, token="wrong")
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    r = abgate("experiments", "list", *target, token=None)
    assert r.returncode == 2 and "--token" in r.stderr
    r = abgate("experiments", "create", *target, "--name", "x", "--arm", "nomodel")
    assert r.returncode == 2 and "NAME=MODEL" in r.stderr
    r = abgate(
        "experiments", "create", *target, "--name", "x", "--arm", "a=m@60", "--arm", "b=m@60"
    )
    assert r.returncode == 1 and "INVALID_ARGUMENT: definition.arms" in r.stderr
