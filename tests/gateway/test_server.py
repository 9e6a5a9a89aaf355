"""A real gateway on a free port, called through a real gRPC channel."""

from __future__ import annotations

import collections
import math

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from abgate.v1 import gateway_pb2 as pb
from gateway.hashing import bucket_v1
from gateway.variants import Variant
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.numeric import assert_scores_close


def tensor(values: np.ndarray | list[float], datatype: str = "FP32") -> pb.Tensor:
    arr = np.ascontiguousarray(values, dtype="<f4")
    return pb.Tensor(shape=list(arr.shape), raw=arr.tobytes(), datatype=datatype)


def predict(
    gw: InProcessGateway, user: str, row: np.ndarray, experiment: str = "demo"
) -> pb.PredictResponse:
    return gw.stub.Predict(
        pb.PredictRequest(experiment=experiment, user_id=user, features=tensor(row)), timeout=10
    )


def test_same_user_same_arm_across_calls(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    row = demo_store.X[0]
    for i in range(50):
        user = f"u{i}"
        arms = {predict(gateway, user, row).arm for _ in range(3)}
        assert len(arms) == 1
        resp = predict(gateway, user, row)
        assert resp.bucket == bucket_v1(_salt(gateway), user)
        assert resp.hash_version == 1
        assert resp.config_version >= 1


def _salt(gw: InProcessGateway) -> str:
    snap = gw.server.dataplane.snapshot
    assert snap is not None
    return snap.experiments["demo"].salt


def test_arm_shares_within_one_point_over_20000_users(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    for experiment in ("demo", "demo-3way"):
        snap = gateway.server.dataplane.snapshot
        assert snap is not None
        weights = snap.experiments[experiment].allocation.weights()
        counts: collections.Counter[str] = collections.Counter()
        for chunk in range(4):
            ids = [f"share-{chunk}-{j}" for j in range(5000)]
            rows = X[np.arange(5000) % len(X)]
            resp = gateway.stub.PredictBatch(
                pb.PredictBatchRequest(experiment=experiment, user_ids=ids, features=tensor(rows)),
                timeout=30,
            )
            names = [a.name for a in resp.arms]
            counts.update(names[k] for k in resp.arm_index)
        assert sum(counts.values()) == 20_000
        for arm, weight in weights.items():
            assert abs(100 * counts[arm] / 20_000 - weight) <= 1.0, (experiment, arm, counts)


@pytest.mark.numeric
def test_single_and_batch_agree_and_match_onnxruntime(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X[:120]
    users = [f"parity-{i}" for i in range(len(X))]
    batch = gateway.stub.PredictBatch(
        pb.PredictBatchRequest(experiment="demo-3way", user_ids=users, features=tensor(X)),
        timeout=30,
    )
    scores = np.frombuffer(batch.scores.raw, dtype="<f4").reshape(list(batch.scores.shape))
    sessions: dict[str, ort.InferenceSession] = {}
    for i, user in enumerate(users):
        single = predict(gateway, user, X[i], "demo-3way")
        arm = batch.arms[batch.arm_index[i]]
        assert single.arm == arm.name
        assert single.model.sha256 == arm.model.sha256
        sha = single.model.sha256
        if sha not in sessions:
            data = (demo_store.root / "objects" / f"{sha}.onnx").read_bytes()
            sessions[sha] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        sess = sessions[sha]
        outs = sess.run(None, {sess.get_inputs()[0].name: X[i : i + 1].astype(np.float32)})
        ref_label, ref_scores = outs[0], outs[1]
        assert single.label == int(ref_label[0]) == batch.labels[i]
        # Another session; and row i of a 120-row batch, which may take other kernels and,
        # with 2+ threads, another split of the trees.
        assert_scores_close(list(single.scores), ref_scores[0])
        assert_scores_close(scores[i], ref_scores[0])


def test_health_serving_and_reflection(gateway: InProcessGateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "abgate.v1.InferenceGateway"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    answers = list(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "abgate.v1.InferenceGateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_stream_answers_in_order_and_a_bad_message_fails_alone(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    row = demo_store.X[0]
    requests = [
        pb.PredictRequest(experiment="demo", user_id="s1", features=tensor(row), request_id="r1"),
        pb.PredictRequest(experiment="nope", user_id="s2", features=tensor(row), request_id="r2"),
        pb.PredictRequest(
            experiment="demo", user_id="s3", features=tensor(row[:3]), request_id="r3"
        ),
        pb.PredictRequest(experiment="demo", user_id="s4", features=tensor(row), request_id="r4"),
    ]
    answers = list(gateway.stub.PredictStream(iter(requests), timeout=10))
    assert [a.request_id for a in answers] == ["r1", "r2", "r3", "r4"]
    assert [a.error_code for a in answers] == [
        0,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        0,
    ]
    assert answers[0].response.arm == predict(gateway, "s1", row).arm
    assert "features" in answers[2].error_message


def test_generated_request_ids_are_unique(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    row = demo_store.X[0]
    ids = {predict(gateway, f"id-{i}", row).request_id for i in range(200)}
    assert len(ids) == 200
    given = gateway.stub.Predict(
        pb.PredictRequest(experiment="demo", user_id="x", features=tensor(row), request_id="mine"),
        timeout=5,
    )
    assert given.request_id == "mine"


# -- bad input --------------------------------------------------------------------------------
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


BAD_SINGLE = {
    "wrong feature count": (
        lambda row: pb.PredictRequest(experiment="demo", user_id="u", features=tensor(row[:5])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features",
    ),
    "wrong dtype": (
        lambda row: pb.PredictRequest(
            experiment="demo", user_id="u", features=tensor(row, datatype="FP64")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype",
    ),
    "float64 bytes": (
        lambda row: pb.PredictRequest(
            experiment="demo",
            user_id="u",
            features=pb.Tensor(shape=[30], raw=np.asarray(row, dtype="<f8").tobytes()),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features",
    ),
    "wrong shape": (
        lambda row: pb.PredictRequest(
            experiment="demo",
            user_id="u",
            features=pb.Tensor(shape=[2, 15], raw=np.asarray(row, dtype="<f4").tobytes()),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "features.shape",
    ),
    "NaN": (
        lambda row: pb.PredictRequest(
            experiment="demo", user_id="u", features=tensor(np.r_[row[:-1], math.nan])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    "Inf": (
        lambda row: pb.PredictRequest(
            experiment="demo", user_id="u", features=tensor(np.r_[math.inf, row[1:]])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Inf",
    ),
    "empty user id": (
        lambda row: pb.PredictRequest(experiment="demo", user_id="", features=tensor(row)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    "user id over 256 bytes": (
        lambda row: pb.PredictRequest(experiment="demo", user_id="é" * 129, features=tensor(row)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    "unknown experiment": (
        lambda row: pb.PredictRequest(experiment="missing", user_id="u", features=tensor(row)),
        grpc.StatusCode.NOT_FOUND,
        "experiment",
    ),
    "empty experiment": (
        lambda row: pb.PredictRequest(experiment="", user_id="u", features=tensor(row)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "experiment",
    ),
    "request id over 128 bytes": (
        lambda row: pb.PredictRequest(
            experiment="demo", user_id="u", features=tensor(row), request_id="r" * 129
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SINGLE))
def test_bad_predict_is_rejected_before_onnxruntime(
    case: str, gateway: InProcessGateway, demo_store: DemoStore, counted_runs: list[int]
) -> None:
    build, code, needle = BAD_SINGLE[case]
    row = demo_store.X[0]
    with pytest.raises(grpc.RpcError) as err:
        gateway.stub.Predict(build(row), timeout=5)
    assert err.value.code() == code
    assert needle in (err.value.details() or "")
    assert counted_runs[0] == 0
    # and the server keeps serving
    assert predict(gateway, "still-ok", row).arm
    assert counted_runs[0] == 1


def test_user_id_of_exactly_256_bytes_is_accepted(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    assert predict(gateway, "é" * 128, demo_store.X[0]).arm


def test_bad_batches(
    gateway: InProcessGateway, demo_store: DemoStore, counted_runs: list[int]
) -> None:
    X = demo_store.X[:4]
    cases = [
        (
            pb.PredictBatchRequest(experiment="demo", user_ids=["a", "b", "c"], features=tensor(X)),
            "features",
        ),
        (
            pb.PredictBatchRequest(experiment="demo", user_ids=[], features=tensor(X[:0])),
            "user_ids",
        ),
        (
            pb.PredictBatchRequest(
                experiment="demo", user_ids=["a", "", "c", "d"], features=tensor(X)
            ),
            "user_ids[1]",
        ),
        (
            pb.PredictBatchRequest(
                experiment="demo", user_ids=list("abcd"), features=tensor(X), request_ids=["x"]
            ),
            "request_ids",
        ),
        (
            pb.PredictBatchRequest(
                experiment="demo",
                user_ids=list("abcd"),
                features=tensor(X),
                request_ids=["r1", "r2", "r3", "r2"],
            ),
            "request_ids[3]",
        ),
        (
            pb.PredictBatchRequest(
                experiment="demo",
                user_ids=list("abcd"),
                features=tensor(np.where(np.eye(4, 30) > 0, np.nan, X)),
            ),
            "row 0",
        ),
    ]
    for request, needle in cases:
        with pytest.raises(grpc.RpcError) as err:
            gateway.stub.PredictBatch(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
        assert needle in (err.value.details() or ""), (needle, err.value.details())
    assert counted_runs[0] == 0


def test_batch_over_row_limit(demo_store: DemoStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, max_batch_rows=10))
    try:
        X = demo_store.X[:11]
        with pytest.raises(grpc.RpcError) as err:
            gw.stub.PredictBatch(
                pb.PredictBatchRequest(
                    experiment="demo", user_ids=[str(i) for i in range(11)], features=tensor(X)
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit of 10" in (err.value.details() or "")
    finally:
        gw.close()


def test_oversized_message_is_refused_and_server_keeps_serving(
    demo_store: DemoStore,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, max_message_bytes=64 * 1024))
    try:
        big = np.zeros((1000, 30), dtype=np.float32)  # 120 KB of features
        with pytest.raises(grpc.RpcError) as err:
            gw.stub.PredictBatch(
                pb.PredictBatchRequest(
                    experiment="demo", user_ids=[str(i) for i in range(1000)], features=tensor(big)
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert predict(gw, "after", demo_store.X[0]).arm
    finally:
        gw.close()


def test_no_config_means_unavailable(demo_store: DemoStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, config=None))
    try:
        with pytest.raises(grpc.RpcError) as err:
            predict(gw, "u", demo_store.X[0])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(gw.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        gw.close()


def test_request_ids_unique_across_single_and_batch(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    ids = [predict(gateway, "a", X[0]).request_id]
    batch = gateway.stub.PredictBatch(
        pb.PredictBatchRequest(experiment="demo", user_ids=["b", "c", "d"], features=tensor(X[:3])),
        timeout=10,
    )
    ids += list(batch.request_ids)
    ids.append(predict(gateway, "e", X[0]).request_id)
    assert len(set(ids)) == len(ids) == 5
