"""The hand-encoded answers parse to exactly what protobuf would have built."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abgate.v1 import gateway_pb2 as pb
from gateway import codec


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.text(max_size=200),
    label=st.integers(-(2**63), 2**63 - 1),
    scores=st.lists(st.floats(width=32, allow_nan=False), min_size=0, max_size=12),
    bucket=st.integers(0, 9999),
    config_version=st.integers(0, 2**64 - 1),
    experiment=st.text(max_size=40),
    arm=st.text(max_size=40),
)
def test_raw_prediction_equals_protobuf(
    request_id: str, label: int, scores: list[float], bucket: int, config_version: int,
    experiment: str, arm: str,
) -> None:  # fmt: skip
    model = pb.ModelRef(id="m", version="3", sha256="ab" * 32)
    prefix = codec.response_prefix(experiment, arm, model, config_version, 1)
    arr = np.asarray(scores, dtype=np.float32)
    raw = codec.encode_prediction_raw(prefix, request_id, label, arr, bucket)
    expected = pb.PredictResponse(
        request_id=request_id, experiment=experiment, arm=arm, model=model, label=label,
        scores=arr.tolist(), config_version=config_version, bucket=bucket, hash_version=1,
    )  # fmt: skip
    assert pb.PredictResponse.FromString(raw) == expected
    stream = pb.StreamPredictResponse.FromString(codec.encode_stream_raw(raw, request_id))
    assert stream.response == expected and stream.request_id == request_id


def test_ids_that_are_not_utf8_are_invalid_arguments() -> None:
    import pytest

    from abgate.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="user_id: is not valid UTF-8"):
        codec.check_user_id("a\ud800")
    with pytest.raises(InvalidArgument, match="request_id: is not valid UTF-8"):
        codec.check_request_id("r\udfff")
    codec.check_user_id("é" * 128)  # 256 bytes: fine
