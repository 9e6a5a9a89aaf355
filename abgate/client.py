"""A small synchronous client for the native API, used by the CLI, the demo and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc


class RpcFailure(Exception):
    """A call ended with a non-OK status; ``str()`` is ``"STATUS_NAME: details"``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


def features_tensor(rows: Sequence[float] | np.ndarray) -> pb.Tensor:
    arr = np.ascontiguousarray(rows, dtype="<f4")
    return pb.Tensor(shape=list(arr.shape), raw=arr.tobytes(), datatype="FP32")


def response_dict(r: pb.PredictResponse) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "experiment": r.experiment,
        "arm": r.arm,
        "model": {"id": r.model.id, "version": r.model.version, "sha256": r.model.sha256},
        "label": r.label,
        "scores": [float(s) for s in r.scores],
        "config_version": r.config_version,
        "bucket": r.bucket,
        "hash_version": r.hash_version,
    }


class GatewayClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        max_message_bytes: int = 64 << 20,
        token: str = "",
    ):
        """``token``: the bearer token of a gateway run with ``--client-tokens-file``."""
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.stub = pb_grpc.InferenceGatewayStub(self.channel)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def predict_raw(self, request: pb.PredictRequest) -> pb.PredictResponse:
        try:
            return self.stub.Predict(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise RpcFailure(exc.code(), exc.details() or "") from None

    def predict(
        self,
        experiment: str,
        user_id: str,
        features: Sequence[float] | np.ndarray,
        request_id: str = "",
    ) -> dict[str, Any]:
        request = pb.PredictRequest(
            experiment=experiment,
            user_id=user_id,
            features=features_tensor(features),
            request_id=request_id,
        )
        return response_dict(self.predict_raw(request))

    def record_outcomes(self, outcomes: Sequence[tuple[str, float, str]]) -> int:
        """(request_id, value, source) triples; returns how many the gateway accepted."""
        request = pb.RecordOutcomeRequest(
            outcomes=[pb.Outcome(request_id=r, value=v, source=s) for r, v, s in outcomes]
        )
        try:
            return int(
                self.stub.RecordOutcome(
                    request, timeout=self.timeout, metadata=self.metadata
                ).accepted
            )
        except grpc.RpcError as exc:
            raise RpcFailure(exc.code(), exc.details() or "") from None

    def predict_batch(
        self,
        experiment: str,
        user_ids: Sequence[str],
        rows: np.ndarray,
        request_ids: Sequence[str] = (),
    ) -> pb.PredictBatchResponse:
        request = pb.PredictBatchRequest(
            experiment=experiment,
            user_ids=list(user_ids),
            features=features_tensor(rows),
            request_ids=list(request_ids),
        )
        try:
            return self.stub.PredictBatch(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise RpcFailure(exc.code(), exc.details() or "") from None
