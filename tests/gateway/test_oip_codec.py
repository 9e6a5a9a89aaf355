"""The OIP V2 codec alone, without a server: the hand-encoded answer equals protobuf's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from gateway.dataplane import BatchResult
from gateway.oip_codec import KNOWN_OUTPUTS, encode_answer, encode_infer, response_prefix


def _batch(n: int, labels: list[int], arm_index: list[int]) -> tuple[Any, BatchResult]:
    arms = tuple(
        SimpleNamespace(name=name, index=i, model_id=f"m-{name}", model_sha256=str(i) * 64)
        for i, name in enumerate(("control", "treatment"))
    )
    exp = SimpleNamespace(name="demo", config_version=300, hash_version=1, arms=arms)
    scores = np.random.default_rng(n).random((n, 3), dtype=np.float32)
    result = BatchResult(
        "demo",
        300,
        1,
        arms,  # type: ignore[arg-type]
        np.asarray(arm_index, dtype=np.intp),
        np.arange(n, dtype=np.intp) * 997,
        np.asarray(labels, dtype=np.int64),
        scores,
        [f"r{'é' * 70}:{i}" for i in range(n)],
    )
    return exp, result


@pytest.mark.parametrize("outputs", [("label", "probabilities"), KNOWN_OUTPUTS, ("request_id",)])
@pytest.mark.parametrize("single_arm", [True, False])
@pytest.mark.parametrize("raw", [True, False])
def test_hand_encoded_answer_equals_protobuf(
    outputs: tuple[str, ...], single_arm: bool, raw: bool
) -> None:
    for n, labels in [(1, [1]), (3, [-1, 0, 2**40]), (200, list(range(200)))]:
        exp, result = _batch(n, labels, [0] * n if single_arm else [i % 2 for i in range(n)])
        arm = exp.arms[0] if single_arm else None
        bucket = 9999 if single_arm else None
        rid = "é" * 100 if n == 1 else "x"
        fast = encode_answer(response_prefix(exp, arm), result, rid, outputs, bucket, raw)
        slow = encode_infer(exp, result, rid, outputs, raw, arm, bucket)
        assert oip.ModelInferResponse.FromString(fast) == slow
