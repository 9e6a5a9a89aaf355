"""Bad bytes and huge strings through a real gateway: a message that does not parse is
INVALID_ARGUMENT "undecodable request" on every method (logged once per interval, never as a
traceback), fails only its own message in PredictStream, and a client's string comes back in
an error capped, so a 1 MiB name is NOT_FOUND like any other unknown name."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import abgate.surface
from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.v1 import gateway_pb2 as pb
from tests.conftest import DemoStore, InProcessGateway, gateway_settings

GARBAGE = b"\xff\xff\xff\x0a"  # an invalid tag, then a field cut short
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
METHODS = [
    "/abgate.v1.InferenceGateway/Predict",
    "/abgate.v1.InferenceGateway/PredictBatch",
    "/abgate.v1.InferenceGateway/RecordOutcome",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ServerLive",
]


@pytest.fixture(scope="module")
def gw(
    demo_store: DemoStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    gateway = InProcessGateway(gateway_settings(demo_store, tmp_path_factory.mktemp("gw")))
    try:
        yield gateway
    finally:
        gateway.close()


def fails(channel: grpc.Channel, method: str, body: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(body, timeout=10)
    return info.value


def row_tensor(demo_store: DemoStore) -> pb.Tensor:
    row = np.asarray(demo_store.X[0], dtype="<f4")
    return pb.Tensor(shape=[len(row)], raw=row.tobytes())


def test_undecodable_requests_are_invalid_argument_and_logged_once(
    gw: InProcessGateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh limiter: another test in this process may have just written its line.
    monkeypatch.setattr(abgate.surface, "_undecodable_log", abgate.surface._UndecodableLog())
    caplog.set_level(logging.INFO)
    for method in METHODS:
        for _ in range(20):
            error = fails(gw.channel, method, GARBAGE)
            assert (error.code(), error.details()) == (INVALID_ARGUMENT, "undecodable request")
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    (line,) = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert line.startswith("1 undecodable request(s) answered INVALID_ARGUMENT"), line
    # The next line, once the interval has passed, counts every call since the first.
    abgate.surface._undecodable_log._next = 0.0
    fails(gw.channel, METHODS[0], GARBAGE)
    lines = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 2 and lines[1].startswith(f"{len(METHODS) * 20} undecodable")


def test_an_undecodable_stream_message_fails_alone(
    gw: InProcessGateway, demo_store: DemoStore
) -> None:
    def good(user: str) -> bytes:
        request = pb.PredictRequest(
            experiment="demo", user_id=user, features=row_tensor(demo_store), request_id=user
        )
        return request.SerializeToString()

    stream = gw.channel.stream_stream("/abgate.v1.InferenceGateway/PredictStream")
    raw = list(stream(iter([good("s1"), GARBAGE, b"\x0a", good("s2")]), timeout=10))
    answers = [pb.StreamPredictResponse.FromString(a) for a in raw]
    assert [a.error_code for a in answers] == [0, INVALID_ARGUMENT.value[0], 3, 0]
    assert [a.error_message for a in answers[1:3]] == ["undecodable request"] * 2
    assert [a.request_id for a in answers] == ["s1", "", "", "s2"]
    assert answers[3].response.experiment == "demo"


def test_echoed_client_strings_are_capped(gw: InProcessGateway, demo_store: DemoStore) -> None:
    huge = "x" * (1 << 20)
    shown = f"{'x' * 64!r}… (1048576 bytes)"
    request = pb.PredictRequest(experiment=huge, user_id="u", features=row_tensor(demo_store))
    error = fails(gw.channel, "/abgate.v1.InferenceGateway/Predict", request.SerializeToString())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"experiment: unknown experiment {shown}"

    for body, method in (
        (oip.ModelInferRequest(model_name=huge), "ModelInfer"),
        (oip.ModelMetadataRequest(name=huge), "ModelMetadata"),
    ):
        error = fails(
            gw.channel, f"/inference.GRPCInferenceService/{method}", body.SerializeToString()
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND, method
        assert error.details() == f"model_name: unknown model {shown}", method

    features = row_tensor(demo_store)
    features.datatype = "FP16" * 10_000
    request = pb.PredictRequest(experiment="demo", user_id="u", features=features)
    error = fails(gw.channel, "/abgate.v1.InferenceGateway/Predict", request.SerializeToString())
    assert error.code() == INVALID_ARGUMENT
    assert error.details() == (
        f"features: datatype {'FP16' * 16!r}… (40000 bytes) not supported, use FP32"
    )
    batch = pb.PredictBatchRequest(
        experiment="demo",
        user_ids=["a"],
        features=pb.Tensor(shape=[1] * 5000, raw=features.raw),
    )
    error = fails(gw.channel, "/abgate.v1.InferenceGateway/PredictBatch", batch.SerializeToString())
    assert error.code() == INVALID_ARGUMENT
    assert (
        error.details().startswith("features.shape: shape [1, 1, 1") and len(error.details()) < 200
    )
    assert "(5000 items)" in error.details()


def test_shown_caps_strings_bytes_and_lists() -> None:
    from abgate.errors import shown

    assert shown("demo") == "'demo'"
    assert shown("é" * 65) == f"{'é' * 64!r}… (130 bytes)"
    nul = b"\x00"
    assert shown(nul * 100) == f"{nul * 64!r}… (100 bytes)"
    assert shown([1, 2]) == "[1, 2]"
    assert shown(list(range(100))).endswith("… (100 items)")
    assert len(shown("\U0010ffff" * 10_000)) < 1000  # repr may widen each char; still bounded
