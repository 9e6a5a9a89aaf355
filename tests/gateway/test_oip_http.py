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
    status, doc = call(rest, "POST", "/v2/models/demo/versions/3/infer", infer_body(row, "u"))
    assert status == 400 and "version" in doc["error"]


def post_binary(
    gw: InProcessGateway, doc: dict[str, Any], binary: bytes, header: str | None = None
) -> tuple[int, dict[str, Any], bytes]:
    """A request in Triton's binary-tensor extension: the JSON header, then the tensors' bytes;
    the answer's JSON and the binary data after it."""
    head = json.dumps(doc).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{gw.server.http_port}/v2/models/demo/infer", data=head + binary,
        method="POST", headers={"Inference-Header-Content-Length": header or str(len(head)),
                                "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body, n = r.read(), r.headers.get("Inference-Header-Content-Length")
            status = r.status
    except urllib.error.HTTPError as exc:
        body, n, status = exc.read(), None, exc.code
    if n is None:
        return status, json.loads(body), b""
    return status, json.loads(body[: int(n)]), body[int(n) :]


def _binary_outputs(doc: dict[str, Any], data: bytes) -> dict[str, Any]:
    """name -> numpy array (binary outputs) or the JSON data list."""
    out, at = {}, 0
    for o in doc["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = o["data"]
            continue
        dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
        out[o["name"]] = np.frombuffer(data[at : at + size], dtype=dtype).reshape(o["shape"])
        at += size
    assert at == len(data)
    return out


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)


def test_binary_tensor_extension(rest: InProcessGateway, demo_store: DemoStore) -> None:
    X = demo_store.X[:2].astype("<f4")
    n = X.shape[1]
    features = {"name": "features", "shape": [2, n], "datatype": "FP32",
                "parameters": {"binary_data_size": X.nbytes}}  # fmt: skip
    # Every input binary, every output binary (what tritonclient.http sends by default).
    doc = {"id": "b-1", "parameters": {"user_id": "bin-user", "binary_data_output": True},
           "inputs": [features]}  # fmt: skip
    status, head, data = post_binary(rest, doc, X.tobytes())
    assert status == 200, head
    got = _binary_outputs(head, data)
    json_status, plain = call(rest, "POST", "/v2/models/demo/infer", {
        "parameters": {"user_id": "bin-user"},
        "inputs": [{"name": "features", "shape": [2, n], "datatype": "FP32",
                    "data": X.ravel().tolist()}],
    })  # fmt: skip
    assert json_status == 200
    want = {o["name"]: o["data"] for o in plain["outputs"]}
    assert got["label"].tolist() == want["label"]
    np.testing.assert_allclose(got["probabilities"].ravel(), want["probabilities"], rtol=1e-6)
    assert head["id"] == "b-1"
    # Mixed: features binary, per-row users as JSON; only probabilities asked for as binary.
    users = {"name": "user_id", "shape": [2], "datatype": "BYTES", "data": ["u-a", "u-b"]}
    doc = {"inputs": [features, users], "outputs": [
        {"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "arm"}]}  # fmt: skip
    status, head, data = post_binary(rest, doc, X.tobytes())
    assert status == 200, head
    mixed = _binary_outputs(head, data)
    assert isinstance(mixed["label"], list) and isinstance(mixed["arm"], list)
    assert mixed["probabilities"].shape == (2, 2)
    # binary_data_output: every output binary but one asked for with binary_data false.
    label_json = {"name": "label", "parameters": {"binary_data": False}}
    doc = {"parameters": {"user_id": "bin-user", "binary_data_output": True},
           "inputs": [features], "outputs": [label_json, {"name": "probabilities"}]}  # fmt: skip
    status, head, data = post_binary(rest, doc, X.tobytes())
    assert status == 200, head
    some = _binary_outputs(head, data)
    assert some["label"] == want["label"] and some["probabilities"].shape == (2, 2)
    # And the other way round: users binary (length-prefixed), features as JSON.
    users_bin = _bytes_tensor(["u-a", "u-b"])
    doc = {"inputs": [
        {"name": "features", "shape": [2, n], "datatype": "FP32", "data": X.ravel().tolist()},
        {"name": "user_id", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(users_bin)}}],
        "outputs": [{"name": "label"}, {"name": "arm"}]}  # fmt: skip
    status, head, data = post_binary(rest, doc, users_bin)
    assert status == 200 and data == b"", head
    assert _binary_outputs(head, data)["arm"] == mixed["arm"]  # the same users, the same arms
    assert _binary_outputs(head, data)["label"] == mixed["label"]
    # Bad input: 400 naming what is wrong, never a 500.
    plain_doc = {"parameters": {"user_id": "u"}, "inputs": [features]}
    for doc, binary, header, text in [
        (plain_doc, X.tobytes(), "many", "Inference-Header-Content-Length"),
        (plain_doc, X.tobytes(), "999999", "Inference-Header-Content-Length"),
        (plain_doc, X.tobytes()[:-4], None, "binary_data_size"),
        (plain_doc, X.tobytes() + b"xx", None, "belong to no input"),
        ({"parameters": {"user_id": "u"}, "inputs": [{**features, "data": [1.0]}]}, X.tobytes(),
         None, "not both"),
        ({"parameters": {"user_id": "u"}, "inputs": [
            {**features, "parameters": {"binary_data_size": X.nbytes - 4}}]}, X.tobytes()[:-4],
         None, "features"),  # the gRPC raw path's byte count check
        ({"parameters": {"user_id": "u"}, "inputs": [features],
          "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}, X.tobytes(),
         None, "binary_data"),
        ({"inputs": [features, {"name": "user_id", "shape": [2], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 6}}]},
         X.tobytes() + b"\x09\x00\x00\x00ab", None, "user_id"),  # the gRPC raw path's
        ({"inputs": [
            {"name": "features", "shape": [2, n], "datatype": "FP32", "data": X.ravel().tolist()},
            {"name": "user_id", "shape": [2], "datatype": "BYTES",
             "parameters": {"binary_data_size": 6}}]},
         b"\x09\x00\x00\x00ab", None, "runs past"),  # decoded here (not every input binary)
    ]:  # fmt: skip
        status, err, _ = post_binary(rest, doc, binary, header)
        assert status == 400 and text in err["error"], (text, err)


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
    # The binary-tensor extension, as tritonclient uses it by default.
    assert seen["binary_label"] == [want["label"]]
    np.testing.assert_allclose(seen["binary_probabilities"], [want["scores"]], rtol=1e-6)
    assert all("binary_data_size" in o["parameters"] for o in seen["binary_header"])


def test_the_extensions_rest_paths(rest: InProcessGateway, demo_store: DemoStore) -> None:
    """Triton's REST paths of ModelConfig, ModelStatistics and RepositoryIndex: the gRPC
    answers, as Triton's JSON (field names, 64-bit counts as numbers)."""
    status, config = call(rest, "GET", "/v2/models/demo/config")
    assert status == 200, config
    assert (config["name"], config["platform"], config["max_batch_size"]) == (
        "demo", "onnxruntime_onnx", rest.server.settings.max_batch_rows
    )  # fmt: skip
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32",
                                "dims": [demo_store.X.shape[1]], "optional": False}]  # fmt: skip
    assert config["parameters"]["arms"] == {"string_value": "control,treatment"}
    assert call(rest, "GET", "/v2/models/nope/config")[0] == 404
    assert call(rest, "GET", "/v2/models/demo/versions/2/config")[0] == 400
    assert call(rest, "POST", "/v2/repository/index", {}) == (200, [
        {"name": "demo", "version": "", "state": "READY", "reason": ""},
        {"name": "demo-3way", "version": "", "state": "READY", "reason": ""},
    ])  # fmt: skip
    assert call(rest, "POST", "/v2/repository/index", {"ready": "yes"})[0] == 400
    status, _ = call(rest, "POST", "/v2/models/demo/infer", infer_body(demo_store.X[0], "st"))
    assert status == 200
    deadline = time.monotonic() + 20
    while True:
        status, stats = call(rest, "GET", "/v2/models/demo/stats")
        counts = {s["version"]: s["inference_count"] for s in stats["model_stats"]}
        if sum(counts.values()) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and sorted(counts.values()) == [0, 1], stats
    arm = next(a for a, c in counts.items() if c == 1)
    status, one = call(rest, "GET", f"/v2/models/demo/versions/{arm}/stats")
    (entry,) = one["model_stats"]
    assert entry["inference_stats"]["success"]["count"] == 1  # a number, not "1"
    assert isinstance(entry["last_inference"], int) and entry["last_inference"] > 0
    status, every = call(rest, "GET", "/v2/models/stats")
    assert status == 200 and {s["name"] for s in every["model_stats"]} == {"demo", "demo-3way"}


def test_rest_calls_share_the_grpc_admission_limits(demo_store: DemoStore, tmp_path: Path) -> None:
    """--max-concurrent-rpcs counts REST calls with gRPC's (429 past it; probes still answer),
    and --max-pending-calls bounds the REST calls waiting for the gateway's loop (503 at once
    past it, the rest answered once the loop is free)."""
    import asyncio
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from abgate.v1 import gateway_pb2 as pb
    from tests.gateway.test_grpc_surface import tensor

    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, http_listen="127.0.0.1:0", max_concurrent_rpcs=1,
                         max_pending_calls=2)
    )  # fmt: skip
    X = demo_store.X
    body = infer_body(X[0], "alice")
    try:
        # A PredictStream holds the one slot from its arrival until its status is sent.
        requests: queue.Queue[pb.PredictRequest | None] = queue.Queue()
        stream = gw.stub.PredictStream(iter(requests.get, None), timeout=30)
        requests.put(pb.PredictRequest(experiment="demo", user_id="s", features=tensor(X[0])))
        next(stream)
        status, got = call(gw, "POST", "/v2/models/demo/infer", body)
        assert status == 429 and "--max-concurrent-rpcs" in got["error"]
        assert call(gw, "GET", "/v2/health/ready") == (200, {"ready": True})
        requests.put(None)
        assert list(stream) == []
        deadline = time.monotonic() + 5
        while gw.server.surface.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert call(gw, "POST", "/v2/models/demo/infer", body)[0] == 200
        assert gw.server.surface.in_flight == 0  # every REST slot given back

        # The gateway's loop busy for a while: two REST calls wait for it, the others are 503.
        blocked, release = threading.Event(), threading.Event()

        async def hog() -> None:
            blocked.set()
            release.wait(10)  # blocks the loop itself, as a long CPU step would

        asyncio.run_coroutine_threadsafe(hog(), gw.loop)
        assert blocked.wait(5)
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(call, gw, "GET", "/v2/models/demo") for _ in range(4)]
            deadline = time.monotonic() + 5
            while sum(f.done() for f in calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = [f.result() for f in calls if f.done()]
            release.set()
            answers = [f.result() for f in calls]
        assert len(refused) == 2
        assert all(s == 503 and "--max-pending-calls" in d["error"] for s, d in refused)
        assert sorted(s for s, _ in answers) == [200, 200, 503, 503]
    finally:
        gw.close()
