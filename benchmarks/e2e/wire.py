"""The request and the answer of the end-to-end comparison: the framed gRPC body h2load posts, a
call through a real gRPC client, what counts as the gateway's answer, and the bare server's copy
of it."""

from __future__ import annotations

import struct

import grpc
import numpy as np

from abgate.v1 import gateway_pb2 as pb

PATH = "/abgate.v1.InferenceGateway/Predict"
# Answers whose size differs from the bare server's by more than this are not the same answer.
# Only the gateway's request id varies in size: its hex call counter grows from 1 to 5 digits
# over a benchmark (see bare_response); a gRPC error instead carries no message at all.
SIZE_SLACK_BYTES = 5
GATEWAY_ARMS = ("control", "treatment")


def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed gRPC message: 1 byte compressed flag (0), 4 bytes big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def grpc_unframe(body: bytes) -> bytes:
    """The message inside one uncompressed gRPC frame (the inverse of ``grpc_frame``)."""
    if len(body) < 5:
        raise ValueError("a gRPC frame has a 5-byte prefix")
    flag, length = struct.unpack(">BI", body[:5])
    if flag != 0 or length != len(body) - 5:
        raise ValueError(f"bad gRPC frame: flag {flag}, length {length}, {len(body) - 5} bytes")
    return body[5:]


def build_request(row: np.ndarray, user_id: str, experiment: str = "demo") -> pb.PredictRequest:
    """A Predict request for one float32 feature row, the way a client would encode it."""
    arr = np.ascontiguousarray(row, dtype="<f4").reshape(-1)
    return pb.PredictRequest(
        experiment=experiment,
        user_id=user_id,
        features=pb.Tensor(shape=[arr.size], raw=arr.tobytes(), datatype="FP32"),
    )


def call_raw(target: str, message: bytes, timeout: float = 10.0) -> bytes:
    """Send already serialized PredictRequest bytes through a real gRPC client; the answer's
    bytes. Raises grpc.RpcError on a non-OK status."""
    with grpc.insecure_channel(target) as channel:
        # No serializers: bytes in, bytes out.
        predict = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
        answer: bytes = predict(message, timeout=timeout)
        return answer


def check_answer(raw: bytes, *, arm: str | None = None) -> pb.PredictResponse:
    """A gateway-shaped answer for the "demo" experiment, or AssertionError saying why not."""
    r = pb.PredictResponse.FromString(raw)
    problems = []
    if r.experiment != "demo":
        problems.append(f"experiment {r.experiment!r}")
    if r.arm not in GATEWAY_ARMS or (arm is not None and r.arm != arm):
        problems.append(f"arm {r.arm!r}")
    if not r.request_id:
        problems.append("no request_id")
    if len(r.model.sha256) != 64 or not r.model.id or not r.model.version:
        problems.append(f"model {r.model.id!r}:{r.model.version!r} sha {r.model.sha256!r}")
    if len(r.scores) != 2:
        problems.append(f"{len(r.scores)} scores")
    if r.config_version < 1 or r.hash_version < 1:
        problems.append(f"config_version {r.config_version} hash_version {r.hash_version}")
    if problems:
        raise AssertionError("unexpected answer: " + ", ".join(problems))
    return r


def bare_response(answer: pb.PredictResponse) -> pb.PredictResponse:
    """The gateway's answer with the request id as long as the gateway sends under load.

    Gateway ids are 16 hex digits, "-", and a hex call counter: a fresh gateway answers with
    a 1-digit counter, but from call 65,536 on the counter has 5 digits (4 bytes more), which
    is what the gateway sends during most of the measured runs.
    """
    bare = pb.PredictResponse()
    bare.CopyFrom(answer)
    prefix, dash, _ = answer.request_id.rpartition("-")
    if dash:
        bare.request_id = f"{prefix}-{0x10000:x}"
    return bare


def pick_user(target: str, row: np.ndarray, arm: str = "treatment", tries: int = 500) -> str:
    """The first ``bench-user-N`` the gateway routes to ``arm`` (the heavier demo model)."""
    for i in range(tries):
        user = f"bench-user-{i}"
        answer = check_answer(call_raw(target, build_request(row, user).SerializeToString()))
        if answer.arm == arm:
            return user
    raise RuntimeError(f"no user among {tries} routed to arm {arm!r}")
