"""Request builders: the concatenated templates parse to exactly the intended messages."""

from __future__ import annotations

import numpy as np
import pytest

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.v1 import gateway_pb2 as pb
from loadtest.targets import RequestBuilder

ROWS = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def test_native_request() -> None:
    b = RequestBuilder("native", "demo", ROWS)
    m = pb.PredictRequest.FromString(b.build(2, "user-7", "lt-x-0-1"))
    expected = pb.PredictRequest(
        experiment="demo",
        user_id="user-7",
        request_id="lt-x-0-1",
        features=pb.Tensor(shape=[4], raw=ROWS[2].astype("<f4").tobytes(), datatype="FP32"),
    )
    assert m == expected


def test_oip_request() -> None:
    b = RequestBuilder("oip", "my-model", ROWS, oip_input_name="features")
    m = oip.ModelInferRequest.FromString(b.build(1, "user-3", "lt-x-0-2"))
    assert m.model_name == "my-model" and m.id == "lt-x-0-2"
    assert len(m.inputs) == 1
    assert (m.inputs[0].name, m.inputs[0].datatype, list(m.inputs[0].shape)) == (
        "features", "FP32", [1, 4],
    )  # fmt: skip
    assert np.array_equal(np.frombuffer(m.raw_input_contents[0], "<f4"), ROWS[1])
    assert dict(m.parameters) == {"user_id": oip.InferParameter(string_param="user-3")}


def test_bad_builder_arguments() -> None:
    with pytest.raises(ValueError):
        RequestBuilder("rest", "demo", ROWS)
    with pytest.raises(ValueError):
        RequestBuilder("native", "demo", ROWS[0])
