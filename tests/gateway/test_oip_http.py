"""The Open Inference Protocol V2 over HTTP/REST (abgate serve --http-listen) on a real gateway:
the KServe V2 paths answer what the gRPC calls of the same name answer (one servicer), errors
are {"error": …} with the HTTP status of their gRPC status, and curl works as a user's would."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.client import GatewayClient
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import fetch


@pytest.fixture
def rest(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, fresh_db, http_listen="127.0.0.1:0")
    )
    try:
        assert gw.server.http_port > 0
        yield gw
    finally:
        gw.close()


def call(gw: InProcessGateway, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{gw.server.http_port}{path}", data=data,
                                 method=method, headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def infer_body(row: np.ndarray, user: str, request_id: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "parameters": {"user_id": user},
        "inputs": [
            {
                "name": "features",
                "shape": [1, len(row)],
                "datatype": "FP32",
                "data": [float(x) for x in row],
            }
        ],
    }
    if request_id:
        body["id"] = request_id
    return body


def test_health_metadata_and_infer_answer_as_grpc(
    rest: InProcessGateway, demo_store: DemoStore, fresh_db: str
) -> None:
    assert call(rest, "GET", "/v2/health/live") == (200, {"live": True})
    assert call(rest, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, server = call(rest, "GET", "/v2")
    assert status == 200 and server["name"] and "version" in server
    status, meta = call(rest, "GET", "/v2/models/demo")
    assert status == 200 and meta["name"] == "demo"
    assert meta["inputs"][0]["shape"][-1] == demo_store.X.shape[1]
    assert call(rest, "GET", "/v2/models/demo/ready") == (200, {"name": "demo", "ready": True})
    assert call(rest, "GET", "/v2/models/nope/ready")[1]["ready"] is False
    X = demo_store.X
    status, got = call(rest, "POST", "/v2/models/demo/infer", infer_body(X[0], "alice", "h-1"))
    assert status == 200, got
    outputs = {o["name"]: o for o in got["outputs"]}
    with GatewayClient(rest.target) as native:
        want = native.predict("demo", "alice", X[0])
    assert outputs["label"]["data"] == [want["label"]]
    np.testing.assert_allclose(outputs["probabilities"]["data"], want["scores"], rtol=1e-6)
    assert got["id"] == "h-1" and got["model_version"].startswith(want["arm"] + "@")
    # The same id again: the first answer, logged once (the gRPC call's idempotency).
    again = call(rest, "POST", "/v2/models/demo/infer", infer_body(X[0], "alice", "h-1"))
    assert again == (200, got)
    time.sleep(0.5)
    assert fetch(fresh_db, "SELECT count(*) AS n FROM predictions WHERE request_id = 'h-1'"
                 )[0]["n"] == 1  # fmt: skip


def test_errors_have_the_grpc_status_as_http_status(
    rest: InProcessGateway, demo_store: DemoStore
) -> None:
    row = demo_store.X[0]
    status, doc = call(rest, "POST", "/v2/models/nope/infer", infer_body(row, "u"))
    assert status == 404 and "nope" in doc["error"]
    status, doc = call(rest, "POST", "/v2/models/demo/infer", infer_body(row[:3], "u"))
    assert status == 400 and doc["error"]
    no_user = infer_body(row, "u")
    del no_user["parameters"]
    status, doc = call(rest, "POST", "/v2/models/demo/infer", no_user)
    assert status == 400 and "user_id" in doc["error"]
    # The header the gRPC side reads (x-user-id) works here too.
    status, _ = call(rest, "POST", "/v2/models/demo/infer", no_user, {"x-user-id": "bob"})
    assert status == 200
    for body, text in (
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "f", "shape": "x", "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "f", "shape": [1], "datatype": "FP17", "data": [1]}]}, "FP17"),
        ({"inputs": [{"name": "f", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, "data"),
    ):
        status, doc = call(rest, "POST", "/v2/models/demo/infer", body)
        assert status == 400 and text in doc["error"], (body, doc)
    status, doc = call(rest, "POST", "/v2/models/demo/infer", infer_body(row, "u"),
                       {"Inference-Header-Content-Length": "10"})  # fmt: skip
    assert status == 400 and "binary tensor extension" in doc["error"]
    status, doc = call(rest, "POST", "/v2/models/demo/versions/3/infer", infer_body(row, "u"))
    assert status == 400 and "version" in doc["error"]


def test_curl(rest: InProcessGateway, demo_store: DemoStore) -> None:
    body = json.dumps(infer_body(demo_store.X[1], "carol"))
    url = f"http://127.0.0.1:{rest.server.http_port}/v2/models/demo/infer"
    r = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json",
                        "-d", body, "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    text, code = r.stdout.rsplit("\n", 1)
    assert code == "200", r.stdout + r.stderr
    assert {o["name"] for o in json.loads(text)["outputs"]} >= {"label", "probabilities"}


@pytest.mark.slow
def test_tritonclient_http(rest: InProcessGateway, demo_store: DemoStore) -> None:
    """tritonclient's HTTP client (in .venv-interop, as the gRPC interop test runs it)."""

    from tests.interop.venv import InteropVenvError, interop_python

    try:
        python = interop_python()
    except InteropVenvError as exc:
        pytest.fail(f"cannot build the tritonclient virtualenv (.venv-interop): {exc}")
    script = Path(__file__).resolve().parents[1] / "interop" / "triton_http_client.py"
    row = demo_store.X[2]
    scenario = {"url": f"127.0.0.1:{rest.server.http_port}", "model": "demo", "user": "dave",
                "row": [float(x) for x in row]}  # fmt: skip
    proc = subprocess.run([str(python), str(script)], input=json.dumps(scenario),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout)
    assert seen["live"] is seen["ready"] is seen["model_ready"] is True
    assert seen["metadata"]["name"] == "demo" and seen["id"] == "http-1"
    with GatewayClient(rest.target) as native:
        want = native.predict("demo", "dave", row)
    assert seen["label"] == [want["label"]]
    np.testing.assert_allclose(seen["probabilities"], [want["scores"]], rtol=1e-6)
    assert seen["model_version"].startswith(want["arm"] + "@")
    assert "no-such-model" in seen["unknown"]
