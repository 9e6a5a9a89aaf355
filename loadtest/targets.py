"""Request builders (native ``Predict``, OIP V2 ``ModelInfer``) and a grpc.aio target that sends
pre-serialized requests and outcome batches."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.v1 import gateway_pb2 as pb

PROTOCOLS = ("native", "oip")
NATIVE_PREDICT = "/abgate.v1.InferenceGateway/Predict"
NATIVE_RECORD_OUTCOME = "/abgate.v1.InferenceGateway/RecordOutcome"
OIP_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 << 20


class RequestBuilder:
    """Serialized requests for one protocol, built from per-row templates.

    A protobuf message may be sent as the concatenation of serialized parts (the parser merges
    them), so the part that never changes (experiment / model name, the feature tensor) is
    serialized once per row, and each request only adds its user id and request id.
    """

    def __init__(
        self, protocol: str, experiment: str, rows: np.ndarray, oip_input_name: str = "features"
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.path = NATIVE_PREDICT if protocol == "native" else OIP_MODEL_INFER
        matrix = np.ascontiguousarray(rows, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] < 1:
            raise ValueError(f"rows must be a non-empty 2-D array, got shape {matrix.shape}")
        n_features = int(matrix.shape[1])
        self.templates: list[bytes] = []
        for row in matrix:
            if protocol == "native":
                msg: pb.PredictRequest | oip.ModelInferRequest = pb.PredictRequest(
                    experiment=experiment,
                    features=pb.Tensor(shape=[n_features], raw=row.tobytes(), datatype="FP32"),
                )
            else:
                msg = oip.ModelInferRequest(
                    model_name=experiment,
                    inputs=[
                        oip.ModelInferRequest.InferInputTensor(
                            name=oip_input_name, datatype="FP32", shape=[1, n_features]
                        )
                    ],
                    raw_input_contents=[row.tobytes()],
                )
            self.templates.append(msg.SerializeToString())

    def build(self, row: int, user_id: str, request_id: str) -> bytes:
        if self.protocol == "native":
            tail = pb.PredictRequest(user_id=user_id, request_id=request_id)
            return self.templates[row] + tail.SerializeToString()
        # Other OIP servers (MLServer, Triton) ignore the unknown user_id parameter.
        extra = oip.ModelInferRequest(
            id=request_id, parameters={"user_id": oip.InferParameter(string_param=user_id)}
        )
        return self.templates[row] + extra.SerializeToString()


def status_name(exc: BaseException) -> str:
    """gRPC status name of a failed call; client-side failures that are not RPC errors are
    reported as UNKNOWN."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return grpc.StatusCode.UNKNOWN.name


class Target:
    """One or more grpc.aio channels to HOST:PORT; calls go round-robin over the channels."""

    def __init__(
        self,
        address: str,
        path: str,
        *,
        channels: int = 1,
        timeout: float = 10.0,
        token: str = "",
    ):
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this, channels with equal arguments share one connection, and several
            # connections are the point of --channels (a SO_REUSEPORT server spreads them).
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.address = address
        self.timeout = timeout
        # Sent with every call when the gateway wants a client identity (--client-tokens-file).
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channels = [
            grpc.aio.insecure_channel(address, options=options) for _ in range(channels)
        ]
        # Bytes in, bytes out: requests are pre-serialized and only the status is needed.
        self._calls = [
            ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            for ch in self._channels
        ]
        self._outcomes = self._channels[0].unary_unary(
            NATIVE_RECORD_OUTCOME,
            request_serializer=pb.RecordOutcomeRequest.SerializeToString,
            response_deserializer=pb.RecordOutcomeResponse.FromString,
        )
        self._next = 0

    async def wait_ready(self, timeout: float) -> None:
        """Connect every channel; raises TimeoutError when the target does not answer."""
        import asyncio

        await asyncio.wait_for(
            asyncio.gather(*(ch.channel_ready() for ch in self._channels)), timeout
        )

    async def call(self, payload: bytes) -> None:
        """Send one request; raises grpc.aio.AioRpcError on a non-OK status."""
        i = self._next
        self._next = (i + 1) % len(self._calls)
        await self._calls[i](payload, timeout=self.timeout, metadata=self.metadata)

    async def record_outcomes(self, outcomes: Sequence[tuple[str, float]], source: str) -> int:
        request = pb.RecordOutcomeRequest(
            outcomes=[pb.Outcome(request_id=r, value=v, source=source) for r, v in outcomes]
        )
        response = await self._outcomes(request, timeout=self.timeout, metadata=self.metadata)
        return int(response.accepted)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close(grace=None)
