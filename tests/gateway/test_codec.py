"""The hand-encoded answers parse to exactly what protobuf would have built."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abgate.errors import InvalidArgument
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


def test_text_the_log_cannot_store_is_an_invalid_argument() -> None:
    """PostgreSQL's text holds no NUL: a request id or outcome source with one is refused,
    naming the field (through a real gateway: tests/gateway/test_log_poison.py)."""
    for rid in ("\x00", "a\x00b", "é\x00"):
        with pytest.raises(InvalidArgument, match=r"^request_ids\[3\]: contains U\+0000"):
            codec.check_request_id(rid, field="request_ids[3]")
    outcomes = [pb.Outcome(request_id="r", value=1, source="ok"),
                pb.Outcome(request_id="r", value=1, source="é\x00")]  # fmt: skip
    with pytest.raises(InvalidArgument, match=r"^outcomes\[1\]\.source: contains U\+0000"):
        codec.decode_outcomes(outcomes, 0.0)
    with pytest.raises(InvalidArgument, match=r"^outcomes\[0\]\.source: longer than 64"):
        codec.decode_outcomes([pb.Outcome(request_id="r", value=1, source="é" * 33)], 0.0)
    assert codec.decode_outcomes(outcomes[:1], 5.0) == [("r", 1.0, 5.0, "ok")]


# numeric: the check is a float32 dot product in OpenBLAS, whose kernel depends on the CPU.
@pytest.mark.numeric
@settings(max_examples=500, deadline=None)
@given(values=st.lists(st.floats(width=32), min_size=1, max_size=64))
def test_decode_row_refuses_exactly_the_rows_with_nan_or_inf(values: list[float]) -> None:
    """The dot-product check against zeros agrees with isfinite on any float32 values
    (extremes, subnormals, -0.0 included)."""
    arr = np.asarray(values, dtype=np.float32)
    tensor = pb.Tensor(datatype="FP32", shape=[1, len(arr)], raw=arr.tobytes())
    if np.isfinite(arr).all():
        row = codec.decode_row(tensor, len(arr))
        assert row.shape == (1, len(arr)) and row.tobytes() == arr.tobytes()
    else:
        with pytest.raises(InvalidArgument, match="NaN or Inf"):
            codec.decode_row(tensor, len(arr))


@pytest.mark.numeric
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_row_refuses_a_non_finite_value_among_extremes(bad: float) -> None:
    arr = np.array([3.4e38, -3.4e38, 1e-45, -0.0, 0.0, bad], dtype=np.float32)
    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        codec.decode_row(pb.Tensor(raw=arr.tobytes()), len(arr))
    codec.decode_row(pb.Tensor(raw=arr[:-1].tobytes()), len(arr) - 1)
