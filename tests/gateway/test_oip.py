"""The Open Inference Protocol V2 through a real gateway: our own stubs, and the real
``tritonclient`` in its own virtualenv (``tests/interop``)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import abgate
from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc
from gateway.oip import OIP_SERVICE_NAME
from gateway.oip_codec import decode_bytes_tensor, encode_bytes_tensor
from gateway.variants import Variant
from tests.conftest import DemoStore, GatewayProcess, InProcessGateway, gateway_settings
from tests.interop.venv import InteropVenvError, interop_python
from tests.numeric import assert_scores_close

INTEROP_SCRIPT = Path(__file__).resolve().parents[1] / "interop" / "triton_client.py"
InferRequest = oip.ModelInferRequest


# -- helpers ------------------------------------------------------------------------------------
def oip_stub(gw: InProcessGateway) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(gw.channel)


def f32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype="<f4")


def infer_request(
    rows: np.ndarray,
    user: str | None = "alice",
    *,
    model: str = "demo",
    raw: bool = True,
    request_id: str = "",
    outputs: tuple[str, ...] = (),
    row_users: list[str] | None = None,
) -> InferRequest:
    """A ModelInferRequest as a KServe/Triton client builds it."""
    arr = f32(rows)
    req = InferRequest(model_name=model, id=request_id)
    features = req.inputs.add(name="features", datatype="FP32", shape=list(arr.shape))
    if raw:
        req.raw_input_contents.append(arr.tobytes())
    else:
        features.contents.fp32_contents.extend(arr.ravel().tolist())
    if user is not None:
        req.parameters["user_id"].string_param = user
    if row_users is not None:
        users = req.inputs.add(name="user_id", datatype="BYTES", shape=[len(row_users)])
        encoded = [u.encode() for u in row_users]
        if raw:
            req.raw_input_contents.append(encode_bytes_tensor(encoded))
        else:
            users.contents.bytes_contents.extend(encoded)
    for name in outputs:
        req.outputs.add(name=name)
    return req


def output(resp: oip.ModelInferResponse, name: str) -> np.ndarray:
    """An output as numpy, from raw or typed contents (as tritonclient's as_numpy does)."""
    for i, out in enumerate(resp.outputs):
        if out.name != name:
            continue
        shape = list(out.shape)
        if resp.raw_output_contents:
            data = resp.raw_output_contents[i]
            if out.datatype == "BYTES":
                return np.asarray(decode_bytes_tensor(data, shape[0], name), dtype=object)
            dtype = {"FP32": "<f4", "INT64": "<i8"}[out.datatype]
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        c = out.contents
        if out.datatype == "BYTES":
            return np.asarray(list(c.bytes_contents), dtype=object)
        if out.datatype == "FP32":
            return np.asarray(c.fp32_contents, dtype=np.float32).reshape(shape)
        return np.asarray(c.int64_contents, dtype=np.int64).reshape(shape)
    raise KeyError(name)


def params(resp: oip.ModelInferResponse) -> dict[str, Any]:
    out = {}
    for key, p in resp.parameters.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


class Reference:
    """onnxruntime run directly on the store's model files, by sha256."""

    def __init__(self, demo_store: DemoStore) -> None:
        self.root = demo_store.root
        self.sessions: dict[str, ort.InferenceSession] = {}

    def run(self, sha: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sess = self.sessions.get(sha)
        if sess is None:
            data = (self.root / "objects" / f"{sha}.onnx").read_bytes()
            sess = self.sessions[sha] = ort.InferenceSession(
                data, providers=["CPUExecutionProvider"]
            )
        labels, scores = sess.run(None, {sess.get_inputs()[0].name: f32(rows)})[:2]
        return np.asarray(labels), np.asarray(scores)


@pytest.fixture
def reference(demo_store: DemoStore) -> Reference:
    return Reference(demo_store)


def native_predict(gw: InProcessGateway, user: str, row: np.ndarray) -> pb.PredictResponse:
    arr = f32(row)
    features = pb.Tensor(shape=list(arr.shape), raw=arr.tobytes(), datatype="FP32")
    return gw.stub.Predict(
        pb.PredictRequest(experiment="demo", user_id=user, features=features), timeout=10
    )


@pytest.fixture
def counted_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts onnxruntime calls made through Variant.run."""
    calls = [0]
    original = Variant.run

    def counting(self: Variant, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls[0] += 1
        return original(self, rows)

    monkeypatch.setattr(Variant, "run", counting)
    return calls


async def _fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def logged_rows(url: str, ids: list[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """The served (non-shadow) log rows of ``ids``, waiting until all have been flushed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = asyncio.run(
            _fetch(url, "SELECT * FROM predictions WHERE request_id = ANY($1) AND NOT shadow", ids)
        )
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return {r["request_id"]: r for r in rows}
        time.sleep(0.1)


# -- health and metadata ------------------------------------------------------------------------
def test_health_and_server_metadata(gateway: InProcessGateway) -> None:
    stub = oip_stub(gateway)
    assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
    meta = stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=5)
    assert (meta.name, meta.version, list(meta.extensions)) == ("abgate", abgate.__version__, [])
    for name, version, ready in [
        ("demo", "", True),
        ("demo-3way", "", True),
        ("no-such-model", "", False),  # as Triton and MLServer: not ready, not an error
        ("", "", False),
        ("demo", "3", False),  # the gateway routes; no version can be chosen
    ]:
        assert stub.ModelReady(oip.ModelReadyRequest(name=name, version=version)).ready is ready
    refl = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    answers = list(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    assert OIP_SERVICE_NAME in {s.name for s in answers[0].list_services_response.service}


def test_model_metadata(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    stub = oip_stub(gateway)
    n_features = demo_store.X.shape[1]
    for name in ("demo", "demo-3way"):
        meta = stub.ModelMetadata(oip.ModelMetadataRequest(name=name), timeout=5)
        assert meta.name == name
        assert meta.platform == "onnxruntime_onnx"
        assert list(meta.versions) == []
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("features", "FP32", [-1, n_features])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("label", "INT64", [-1]),
            ("probabilities", "FP32", [-1, 2]),
        ]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(oip.ModelMetadataRequest(name="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model_name" in (err.value.details() or "")


def test_not_configured(demo_store: DemoStore, tmp_path: Path) -> None:
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, config=None))
    try:
        stub = oip_stub(gw)
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
        assert not stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
        assert not stub.ModelReady(oip.ModelReadyRequest(name="demo"), timeout=5).ready
        for call in (
            lambda: stub.ModelInfer(infer_request(demo_store.X[:1]), timeout=5),
            lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name="demo"), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gw.close()


# -- inference ----------------------------------------------------------------------------------
@pytest.mark.numeric
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_one_row_matches_onnxruntime_and_native_predict(
    raw: bool, gateway: InProcessGateway, demo_store: DemoStore, reference: Reference
) -> None:
    stub = oip_stub(gateway)
    snap = gateway.server.dataplane.snapshot
    assert snap is not None
    config_version = snap.experiments["demo"].config_version
    arms_seen = set()
    for i in range(40):
        user, row = f"user-{i}", demo_store.X[i : i + 1]
        resp = stub.ModelInfer(infer_request(row, user, raw=raw), timeout=5)
        native = native_predict(gateway, user, row[0])
        p = params(resp)
        assert p["arm"] == native.arm
        assert p["bucket"] == native.bucket
        assert p["model_sha256"] == native.model.sha256
        assert p["model_id"] == native.model.id
        assert p["config_version"] == native.config_version == config_version
        assert p["hash_version"] == native.hash_version
        assert p["request_id"] == resp.id and resp.id
        assert resp.model_name == "demo"
        assert resp.model_version == f"{native.arm}@{config_version}"
        assert [o.name for o in resp.outputs] == ["label", "probabilities"]
        assert len(resp.raw_output_contents) == (2 if raw else 0)
        labels, scores = output(resp, "label"), output(resp, "probabilities")
        assert labels.shape == (1,) and scores.shape == (1, 2)
        ref_labels, ref_scores = reference.run(native.model.sha256, row)
        assert labels.tolist() == ref_labels.tolist() == [native.label]
        assert_scores_close(scores, ref_scores)  # another session (its own thread count)
        # Exactly: one row through the same session is the same computation, so the same
        # float32; this checks that OIP (raw and fp32_contents) carries it unchanged.
        np.testing.assert_array_equal(scores[0], np.asarray(native.scores, dtype=np.float32))
        arms_seen.add(native.arm)
    assert arms_seen == {"control", "treatment"}


def test_one_dimensional_shape_is_one_row(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    row = demo_store.X[3]
    resp = oip_stub(gateway).ModelInfer(infer_request(row, "one-d"), timeout=5)
    assert output(resp, "probabilities").shape == (1, 2)
    assert params(resp)["arm"] == native_predict(gateway, "one-d", row).arm


@pytest.mark.numeric
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_many_rows_of_one_user(
    raw: bool, gateway: InProcessGateway, demo_store: DemoStore, reference: Reference
) -> None:
    rows = demo_store.X[:25]
    resp = oip_stub(gateway).ModelInfer(
        infer_request(rows, "batch-user", raw=raw, request_id="rq"), timeout=5
    )
    native = native_predict(gateway, "batch-user", rows[0])
    p = params(resp)
    assert p["arm"] == native.arm and p["bucket"] == native.bucket
    assert resp.id == p["request_id"] == "rq"
    ref_labels, ref_scores = reference.run(native.model.sha256, rows)
    assert output(resp, "label").tolist() == ref_labels.tolist()
    assert_scores_close(output(resp, "probabilities"), ref_scores)
    ids = output(
        oip_stub(gateway).ModelInfer(
            infer_request(rows[:3], "batch-user", raw=raw, outputs=("request_id",)), timeout=5
        ),
        "request_id",
    )
    assert len(set(ids.tolist())) == 3 and all(b":" in i for i in ids.tolist())


@pytest.mark.numeric
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_per_row_user_ids_route_like_predict_batch(
    raw: bool, gateway: InProcessGateway, demo_store: DemoStore, reference: Reference
) -> None:
    rows = demo_store.X[:60]
    users = [f"row-user-{i}" for i in range(len(rows))]
    resp = oip_stub(gateway).ModelInfer(
        infer_request(
            rows,
            None,
            raw=raw,
            row_users=users,
            request_id="rows",
            outputs=("arm", "bucket", "probabilities", "label", "request_id"),
        ),
        timeout=10,
    )
    assert [o.name for o in resp.outputs] == [
        "arm",
        "bucket",
        "probabilities",
        "label",
        "request_id",
    ]
    arr = f32(rows)
    batch = gateway.stub.PredictBatch(
        pb.PredictBatchRequest(
            experiment="demo",
            user_ids=users,
            features=pb.Tensor(shape=list(arr.shape), raw=arr.tobytes()),
        ),
        timeout=10,
    )
    native_arms = [batch.arms[k].name for k in batch.arm_index]
    arms = [a.decode() for a in output(resp, "arm").tolist()]
    assert arms == native_arms and set(arms) == {"control", "treatment"}
    assert output(resp, "bucket").tolist() == list(batch.buckets)
    assert output(resp, "request_id").tolist() == [f"rows:{i}".encode() for i in range(60)]
    p = params(resp)
    assert "arm" not in p and "bucket" not in p  # rows went to two arms
    assert resp.model_version.startswith("*@")
    labels, scores = output(resp, "label"), output(resp, "probabilities")
    sha = {a.name: a.model.sha256 for a in batch.arms}
    for i, arm in enumerate(arms):
        ref_labels, ref_scores = reference.run(sha[arm], rows[i : i + 1])
        assert labels[i] == ref_labels[0]
        assert_scores_close(scores[i], ref_scores[0])  # a row of a batch vs the row alone


def test_user_from_header_and_stickiness(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    stub = oip_stub(gateway)
    row = demo_store.X[:1]
    for i in range(30):
        user = f"sticky-{i}"
        by_param = {params(stub.ModelInfer(infer_request(row, user), timeout=5))["arm"]}
        by_param |= {params(stub.ModelInfer(infer_request(row, user), timeout=5))["arm"]}
        by_header = params(
            stub.ModelInfer(infer_request(row, None), metadata=(("x-user-id", user),), timeout=5)
        )["arm"]
        assert by_param == {by_header, native_predict(gateway, user, row[0]).arm}
    # The parameter wins over the header.
    resp = stub.ModelInfer(
        infer_request(row, "sticky-0"), metadata=(("x-user-id", "someone-else"),), timeout=5
    )
    assert params(resp)["bucket"] == native_predict(gateway, "sticky-0", row[0]).bucket


def test_requested_outputs_and_given_request_id(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    stub = oip_stub(gateway)
    rows = demo_store.X[:2]
    for raw in (True, False):
        mine = f"mine-{raw}"
        resp = stub.ModelInfer(
            infer_request(rows, "o", raw=raw, outputs=("probabilities",), request_id=mine),
            timeout=5,
        )
        assert [o.name for o in resp.outputs] == ["probabilities"]
        assert len(resp.raw_output_contents) == (1 if raw else 0)
        assert resp.id == mine
    generated = {stub.ModelInfer(infer_request(rows[:1], "g"), timeout=5).id for _ in range(50)}
    assert len(generated) == 50


def test_a_repeated_id_answers_the_original_and_is_logged_once(
    gateway: InProcessGateway, demo_store: DemoStore, counted_runs: list[int]
) -> None:
    """A ModelInfer retried with its id (as tritonclient and KServe clients retry) gets the
    original answer, is not run again and is logged once; an id used by a call that cannot be its
    retry is ALREADY_EXISTS naming ``id`` (issue #15, item 3)."""
    stub = oip_stub(gateway)
    X = demo_store.X
    calls = {
        "oip-r1": infer_request(X[:1], "alice", request_id="oip-r1"),
        "oip-r3": infer_request(X[:3], "bob", raw=False, request_id="oip-r3"),
        "oip-rows": infer_request(X[:2], None, row_users=["u1", "u2"], request_id="oip-rows"),
    }
    first = {rid: stub.ModelInfer(req, timeout=5) for rid, req in calls.items()}
    runs = counted_runs[0]
    for rid, req in calls.items():
        assert stub.ModelInfer(req, timeout=5) == first[rid]
    # The id names the request: a retry with other features still gets the original answer.
    other = infer_request(X[7:8], "alice", request_id="oip-r1")
    assert stub.ModelInfer(other, timeout=5) == first["oip-r1"]
    assert counted_runs[0] == runs  # not run again
    refused = [
        infer_request(X[:1], "mallory", request_id="oip-r1"),  # another user
        infer_request(X[:2], "alice", request_id="oip-r1"),  # another row count
        infer_request(X[:1], "alice", raw=False, request_id="oip-r1"),  # typed, not raw
        infer_request(X[:1], "alice", request_id="oip-r1", outputs=("label",)),
        infer_request(X[:2], None, row_users=["u1", "u3"], request_id="oip-rows"),
        infer_request(X[:1], "carol", request_id="oip-r3:1"),  # a row of another call
    ]
    for req in refused:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=5)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, req
        assert err.value.details().startswith("id: "), err.value.details()
    # Native and OIP ids live in one space: neither answers the other's call.
    arr = f32(X[0])
    with pytest.raises(grpc.RpcError) as err:
        gateway.stub.Predict(
            pb.PredictRequest(experiment="demo", user_id="alice", request_id="oip-r1",
                              features=pb.Tensor(shape=[N], raw=arr.tobytes())),
            timeout=5,
        )  # fmt: skip
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    gateway.stub.Predict(
        pb.PredictRequest(experiment="demo", user_id="alice", request_id="native-r",
                          features=pb.Tensor(shape=[N], raw=arr.tobytes())),
        timeout=5,
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request(X[:1], "alice", request_id="native-r"), timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    ids = ["oip-r1", "native-r"] + [f"oip-r3:{i}" for i in range(3)] + ["oip-rows:0", "oip-rows:1"]
    url = gateway.server.settings.database_url
    logged = logged_rows(url, ids)
    time.sleep(0.3)  # a second row of any of them would have been flushed by now
    counts = Counter(
        r["request_id"] for r in asyncio.run(_fetch(url, "SELECT request_id FROM predictions"))
    )
    assert sorted(logged) == sorted(ids)
    assert all(counts[rid] == 1 for rid in ids), counts


def test_a_retry_of_a_failed_call_gets_the_same_failure(
    gateway: InProcessGateway, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Variant, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("secret onnxruntime detail")

    monkeypatch.setattr(Variant, "run", broken)
    stub = oip_stub(gateway)
    req = infer_request(demo_store.X[:1], "f", request_id="oip-boom")
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=5)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.INTERNAL,
            "internal error",
        )
    monkeypatch.undo()
    # Still the failure once the model works again: the failure row is the request's one row.
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    rows = logged_rows(gateway.server.settings.database_url, ["oip-boom"])
    assert rows["oip-boom"]["status"] == grpc.StatusCode.INTERNAL.value[0]


# -- bad input ----------------------------------------------------------------------------------
def _two_feature_inputs(row: np.ndarray) -> InferRequest:
    req = infer_request(row)
    req.inputs.add(name="more", datatype="FP32", shape=[1, row.shape[1]])
    req.raw_input_contents.append(f32(row).tobytes())
    return req


def _raw_and_typed(row: np.ndarray) -> InferRequest:
    req = infer_request(row)
    req.inputs[0].contents.fp32_contents.extend(f32(row).ravel().tolist())
    return req


def _raw_count_mismatch(row: np.ndarray) -> InferRequest:
    req = infer_request(row)
    req.raw_input_contents.append(b"\0\0\0\0")
    return req


def _typed_count_wrong(row: np.ndarray) -> InferRequest:
    req = infer_request(row, raw=False)
    del req.inputs[0].contents.fp32_contents[-1]
    return req


def _typed_in_wrong_field(row: np.ndarray) -> InferRequest:
    req = infer_request(row, raw=False)
    req.inputs[0].contents.fp64_contents.extend([1.0])
    return req


def _datatype(row: np.ndarray, datatype: str) -> InferRequest:
    req = infer_request(row)
    req.inputs[0].datatype = datatype
    return req


def _shape(row: np.ndarray, shape: list[int]) -> InferRequest:
    req = infer_request(row)
    req.inputs[0].shape[:] = shape
    return req


def _int_user(row: np.ndarray) -> InferRequest:
    req = infer_request(row, None)
    req.parameters["user_id"].int64_param = 7
    return req


def _with_version(row: np.ndarray) -> InferRequest:
    req = infer_request(row)
    req.model_version = "1"
    return req


def _both_user_forms(row: np.ndarray) -> InferRequest:
    return infer_request(row, "alice", row_users=["a"])


def _bad_bytes_tensor(row: np.ndarray) -> InferRequest:
    req = infer_request(row, None, row_users=["a"])
    req.raw_input_contents[1] = b"\x09\0\0\0abc"  # says 9 bytes, holds 3
    return req


N = 30  # demo models' feature count
BAD: dict[str, tuple[Callable[[np.ndarray], InferRequest], grpc.StatusCode, str]] = {
    "wrong feature count": (
        lambda r: infer_request(r[:, :5]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features.shape",
    ),
    "bytes do not match shape": (
        lambda r: _shape(np.r_[r, r], [1, N]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: expected 1 rows",
    ),
    "three dimensions": (
        lambda r: _shape(r, [1, 1, N]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features.shape",
    ),
    "zero rows": (
        lambda r: infer_request(r[:0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features.shape: must hold at least one row",
    ),
    "FP64 datatype": (
        lambda r: _datatype(r, "FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: datatype 'FP64'",
    ),
    "empty datatype": (
        lambda r: _datatype(r, ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: datatype",
    ),
    "NaN": (
        lambda r: infer_request(np.c_[r[:, :-1], [[math.nan]]]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: row 0 contains NaN",
    ),
    "Inf typed": (
        lambda r: infer_request(np.c_[[[math.inf]], r[:, 1:]], raw=False),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: row 0 contains NaN or Inf",
    ),
    "typed count wrong": (
        _typed_count_wrong,
        grpc.StatusCode.INVALID_ARGUMENT,
        "features: expected 1 rows x 30",
    ),
    "typed in the wrong field": (
        _typed_in_wrong_field,
        grpc.StatusCode.INVALID_ARGUMENT,
        "features.contents",
    ),
    "missing user id": (
        lambda r: infer_request(r, None),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: missing",
    ),
    "empty user id": (
        lambda r: infer_request(r, ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: must not be empty",
    ),
    "user id over 256 bytes": (
        lambda r: infer_request(r, "é" * 129),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: longer than 256 bytes",
    ),
    "user id not a string": (
        _int_user,
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: must be a string",
    ),
    "empty per-row user id": (
        lambda r: infer_request(np.r_[r, r], None, row_users=["a", ""]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id[1]: must not be empty",
    ),
    "per-row user count wrong": (
        lambda r: infer_request(np.r_[r, r], None, row_users=["a"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id.shape",
    ),
    "per-row users and parameter": (
        _both_user_forms,
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: given both",
    ),
    "broken BYTES tensor": (
        _bad_bytes_tensor,
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id: holds fewer",
    ),
    "unknown model": (
        lambda r: infer_request(r, model="missing"),
        grpc.StatusCode.NOT_FOUND,
        "model_name: unknown model 'missing'",
    ),
    "empty model name": (
        lambda r: infer_request(r, model=""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_name",
    ),
    "model version given": (
        _with_version,
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_version",
    ),
    "two feature inputs": (
        _two_feature_inputs,
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: expected one FP32 features tensor",
    ),
    "no inputs": (
        lambda r: InferRequest(model_name="demo"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs",
    ),
    "raw and typed at once": (
        _raw_and_typed,
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents",
    ),
    "raw count differs from inputs": (
        _raw_count_mismatch,
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents",
    ),
    "request id over 128 bytes": (
        lambda r: infer_request(r, request_id="r" * 129),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id: longer than 128 bytes",
    ),
    "row ids over 128 bytes": (
        lambda r: infer_request(np.r_[r, r], request_id="r" * 127),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id: rows are logged",
    ),
    "unknown output": (
        lambda r: infer_request(r, outputs=("label", "scores")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outputs[1].name: unknown output 'scores'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_infer_is_rejected_before_onnxruntime(
    case: str, gateway: InProcessGateway, demo_store: DemoStore, counted_runs: list[int]
) -> None:
    build, code, needle = BAD[case]
    row = demo_store.X[:1]
    stub = oip_stub(gateway)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(build(row), timeout=5)
    assert err.value.code() == code
    assert needle in (err.value.details() or ""), err.value.details()
    assert counted_runs[0] == 0
    # and the server keeps serving
    assert params(stub.ModelInfer(infer_request(row, "still-ok"), timeout=5))["arm"]
    assert counted_runs[0] == 1


def test_oversize(demo_store: DemoStore, tmp_path: Path) -> None:
    gw = InProcessGateway(
        gateway_settings(demo_store, tmp_path, max_batch_rows=10, max_message_bytes=64 * 1024)
    )
    try:
        stub = oip_stub(gw)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(demo_store.X[:11]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "features.shape: 11 rows exceed the limit of 10" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:  # gRPC's own limit, before our code
            stub.ModelInfer(infer_request(np.zeros((1000, N))), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert params(stub.ModelInfer(infer_request(demo_store.X[:10]), timeout=5))["arm"]
    finally:
        gw.close()


def test_model_failure_is_internal_and_logged(
    gateway: InProcessGateway, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Variant, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("secret onnxruntime detail")

    monkeypatch.setattr(Variant, "run", broken)
    stub = oip_stub(gateway)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request(demo_store.X[:2], "f", request_id="boom"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error"
    monkeypatch.undo()
    rows = logged_rows(gateway.server.settings.database_url, ["boom:0", "boom:1"])
    assert sorted(rows) == ["boom:0", "boom:1"]
    for r in rows.values():
        assert (r["status"], r["label"]) == (grpc.StatusCode.INTERNAL.value[0], -1)
    assert params(stub.ModelInfer(infer_request(demo_store.X[:1], "f"), timeout=5))["arm"]


# -- logging ------------------------------------------------------------------------------------
COMPARED = (
    "experiment",
    "config_version",
    "bucket",
    "hash_version",
    "arm",
    "model_id",
    "model_version",
    "model_sha256",
    "label",
    "shadow",
    "gateway_id",
    "status",
)


@pytest.mark.numeric  # the logged scores of two one-row runs, compared exactly
def test_rows_are_logged_like_native_predictions(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    stub = oip_stub(gateway)
    X = demo_store.X
    # One row: the same log row as a native Predict of the same user and features.
    stub.ModelInfer(infer_request(X[:1], "log-user", request_id="oip-one"), timeout=5)
    arr = f32(X[0])
    gateway.stub.Predict(
        pb.PredictRequest(
            experiment="demo",
            user_id="log-user",
            request_id="native-one",
            features=pb.Tensor(shape=[N], raw=arr.tobytes()),
        ),
        timeout=5,
    )
    # Many rows, one user; many rows, one user each; typed.
    stub.ModelInfer(infer_request(X[:5], "log-user", request_id="oip-many"), timeout=5)
    stub.ModelInfer(
        infer_request(X[:4], None, raw=False, row_users=list("abcd"), request_id="oip-rows"),
        timeout=5,
    )
    ids = ["oip-one", "native-one"]
    ids += [f"oip-many:{i}" for i in range(5)] + [f"oip-rows:{i}" for i in range(4)]
    rows = logged_rows(gateway.server.settings.database_url, ids)
    assert sorted(rows) == sorted(ids)
    one, native = rows["oip-one"], rows["native-one"]
    assert {k: one[k] for k in COMPARED} == {k: native[k] for k in COMPARED}
    assert one["scores"] == native["scores"]
    assert set(one) == set(native)
    for i in range(5):
        row = rows[f"oip-many:{i}"]
        assert (row["arm"], row["bucket"], row["status"]) == (one["arm"], one["bucket"], 0)
    arms = {rows[f"oip-rows:{i}"]["arm"] for i in range(4)}
    assert arms <= {"control", "treatment"}
    w = gateway.server.logwriter
    assert w is not None and w.counters.refused == 0


def test_rows_are_mirrored_to_shadows(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    config = tmp_path / "mirror.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "experiments": [
                    {
                        "name": "mirror",
                        "arms": [{"name": "control", "model": shas["demo-logreg"], "weight": 100}],
                        "shadows": [
                            {"name": "shadow", "model": shas["demo-forest"], "sample_rate": 1.0}
                        ],
                    }
                ],
            }
        )
    )
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db, config=config))
    try:
        oip_stub(gw).ModelInfer(
            infer_request(demo_store.X[:3], "s", model="mirror", request_id="m"), timeout=5
        )
        ids = ["m:0", "m:1", "m:2"]
        deadline = time.monotonic() + 20
        while True:
            rows = asyncio.run(_fetch(fresh_db, "SELECT request_id, shadow, arm FROM predictions"))
            if len(rows) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted((r["request_id"], r["shadow"]) for r in rows) == sorted(
            [(i, False) for i in ids] + [(i, True) for i in ids]
        )
    finally:
        gw.close()


# -- the real client: tritonclient in its own virtualenv ----------------------------------------
@pytest.fixture(scope="session")
def interop_venv() -> Path:
    """``.venv-interop`` with tritonclient; created once, reused after. Never skipped: a test
    that cannot build it fails, and says why."""
    try:
        return interop_python()
    except InteropVenvError as exc:
        pytest.fail(f"cannot build the tritonclient virtualenv (.venv-interop): {exc}")


@pytest.fixture
def oip_gateway_process(gateway_process: Any) -> Iterator[GatewayProcess]:
    yield gateway_process()


@pytest.mark.slow
@pytest.mark.numeric
def test_tritonclient_against_a_gateway_process(
    interop_venv: Path,
    oip_gateway_process: GatewayProcess,
    demo_store: DemoStore,
    reference: Reference,
) -> None:
    gp = oip_gateway_process
    rows = demo_store.X[:8]
    row_users = [f"triton-row-{i}" for i in range(len(rows))]
    scenario = {
        "target": gp.target,
        "model": "demo",
        "user": "triton-user",
        "rows": rows.tolist(),
        "row_users": row_users,
        "request_id": "triton-1",
        # rows answered before ModelStatistics: 8 + 1 + 8 by infer, 2 + 1 on the stream
        "answered_rows": 20,
    }
    proc = subprocess.run(
        [str(interop_venv), str(INTEROP_SCRIPT)],
        input=json.dumps(scenario),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout)

    assert seen["live"] is seen["ready"] is seen["model_ready"] is True
    assert seen["unknown_model_ready"] is False
    assert seen["server_metadata"]["name"] == "abgate"
    assert seen["server_metadata"]["version"] == abgate.__version__
    meta = seen["metadata"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"]] == [
        ("features", "FP32", [-1, N])
    ]

    # What the native API and onnxruntime say for the same users and rows.
    with grpc.insecure_channel(gp.target) as channel:
        native_stub = pb_grpc.InferenceGatewayStub(channel)

        def native(user: str, row: np.ndarray) -> pb.PredictResponse:
            arr = f32(row)
            return native_stub.Predict(
                pb.PredictRequest(
                    experiment="demo",
                    user_id=user,
                    features=pb.Tensor(shape=list(arr.shape), raw=arr.tobytes()),
                ),
                timeout=5,
            )

        expected_user = native("triton-user", rows[0])
        expected_rows = [native(u, rows[i]) for i, u in enumerate(row_users)]

    single = seen["single_user"]
    assert single["raw_outputs"] == 2  # tritonclient sends raw, so the answer is raw
    assert single["id"] == single["parameters"]["request_id"] == "triton-1"
    assert single["parameters"]["arm"] == expected_user.arm
    assert single["parameters"]["model_sha256"] == expected_user.model.sha256
    assert single["model_version"] == f"{expected_user.arm}@{expected_user.config_version}"
    ref_labels, ref_scores = reference.run(expected_user.model.sha256, rows)
    assert single["label"]["dtype"] == "int64" and single["label"]["shape"] == [8]
    assert single["probabilities"]["dtype"] == "float32"
    assert single["label"]["values"] == ref_labels.tolist()
    assert_scores_close(single["probabilities"]["values"], ref_scores)

    header = seen["header_user"]
    assert header["parameters"]["arm"] == expected_user.arm
    assert header["label"]["values"] == ref_labels[:1].tolist()

    per_row = seen["row_users"]
    assert per_row["arm"]["values"] == [e.arm for e in expected_rows]
    assert per_row["bucket"]["values"] == [e.bucket for e in expected_rows]
    for i, e in enumerate(expected_rows):
        assert per_row["label"]["values"][i] == e.label
        # The gateway ran these rows as a batch per arm, the native calls one row each: MLAS
        # may take another kernel for the batch (1 float32 ulp apart on an AMD EPYC).
        assert_scores_close(per_row["probabilities"]["values"][i], list(e.scores))

    errors = seen["errors"]
    assert errors["nan"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "features: row 0 contains NaN" in errors["nan"][1]
    assert errors["missing_user"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "user_id" in errors["missing_user"][1]
    assert errors["unknown_model"][0] == "StatusCode.NOT_FOUND"

    # The calls were logged in PostgreSQL like any prediction.
    logged = logged_rows(gp.args[gp.args.index("--database-url") + 1], ["triton-1:0"])
    assert logged["triton-1:0"]["arm"] == expected_user.arm

    # Triton's extensions, decoded by tritonclient's own messages.
    config = seen["model_config"]["config"]
    assert (config["name"], config["platform"], config["backend"]) == (
        "demo", "onnxruntime_onnx", "onnxruntime"
    )  # fmt: skip
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [str(N)]}]
    assert [o["name"] for o in config["output"]] == ["label", "probabilities"]
    assert [g["name"] for g in config["instance_group"]] == ["control", "treatment"]
    assert config["parameters"]["arms"] == {"string_value": "control,treatment"}
    index = seen["repository_index"]["models"]
    assert [(m["name"], m["state"]) for m in index] == [("demo", "READY"), ("demo-3way", "READY")]
    stream = seen["stream"]
    assert stream[0]["id"] == "stream-1" and stream[2]["id"] == "stream-2"
    assert stream[0]["parameters"]["arm"] == expected_user.arm
    assert stream[0]["label"]["values"] == ref_labels[:2].tolist()
    assert stream[2]["label"]["values"] == ref_labels[2:3].tolist()
    assert stream[1]["error"].startswith("INVALID_ARGUMENT: features: row 0 contains NaN")
    stats = {s["version"]: s for s in seen["statistics"]["model_stats"]}
    assert set(stats) == {"control", "treatment"}
    counted = {arm: int(s.get("inference_count", 0)) for arm, s in stats.items()}
    want = Counter([e.arm for e in expected_rows])
    want[expected_user.arm] += 8 + 1 + 2 + 1
    assert counted == dict(want) | {a: 0 for a in {"control", "treatment"} - set(want)}
