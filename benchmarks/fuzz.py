"""Protocol fuzzing of the public gRPC surfaces: the gateway's native API, its Open Inference
Protocol V2 service and health, and the evaluator's admin API and config stream.

Every call sends a mutated message (seeded, so a run can be repeated): a valid request with
some fields set to edge values (empty, huge, NUL, NaN, out-of-range numbers, too many or no
repeated entries), its serialized bytes damaged (bits flipped, truncated, random bytes,
fields of the wrong wire type, bad lengths and varints), or both. A call is bad when

- its status is UNKNOWN or INTERNAL (an error nobody mapped), DEADLINE_EXCEEDED (a hang) or
  RESOURCE_EXHAUSTED (no limit of ours can trip here: an answer too big for the transport);
- its details run long or name a Python exception class (internals leaked);
- a prediction stream (PredictStream, PredictBatchStream) does not answer every message it was
  sent with one answer, or a per-message error carries a bad status;
- an evaluator call with a missing, wrong or doubled ``authorization`` header is not
  UNAUTHENTICATED.

Afterwards a good Predict, ModelInfer and ListExperiments must still answer.

``tests/test_fuzz.py`` runs a few thousand calls against in-process servers;
``python -m benchmarks.fuzz`` runs the long one (50,000 calls by default) against real
``abgate serve`` and ``abgate evaluator`` processes (``make bench-all``):

    python -m benchmarks.fuzz [--calls 50000] [--seed 1] [--out benchmarks/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import gateway_pb2 as pb

NATIVE = "/abgate.v1.InferenceGateway/"
OIP = "/inference.GRPCInferenceService/"
ADMIN = "/abgate.v1.EvaluatorAdmin/"
STREAM_CONFIG = "/abgate.v1.ConfigStream/StreamConfig"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

BAD_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
BAD_CODE_VALUES = frozenset(c.value[0] for c in BAD_CODES)
# Streams that answer each message with one answer of this type, errors included.
_ANSWERED_STREAMS: dict[str, Any] = {
    "PredictStream": pb.StreamPredictResponse,
    "PredictBatchStream": pb.StreamPredictBatchResponse,
}
MAX_DETAILS = 1024  # characters of status details (a capped echo is ~100)
# "ValueError", "KeyError:", "DecodeError" ...: a Python exception's name in an answer.
LEAK = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback")
WINDOW = 8  # unary calls in flight at once
# Mutated messages stay under this size: gRPC itself answers RESOURCE_EXHAUSTED past the
# gateway's --max-message-bytes (4 MiB by default), before any code of ours runs.
MAX_MESSAGE = 1 << 20


# -- seeds: one or more valid requests per method --------------------------------------------
def _row(n_features: int, value: float = 0.5) -> bytes:
    return struct.pack(f"<{n_features}f", *([value] * n_features))


def _bytes_tensor(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


@dataclass(frozen=True)
class Target:
    """What the seeds need to know of the servers under test."""

    experiment: str  # an experiment the gateway serves
    n_features: int
    model: str  # a model sha256 the evaluator may name in definitions
    evaluator_experiment: str = "fuzz-seed"  # created on the evaluator before the run


def native_seeds(t: Target) -> dict[str, list[Message]]:
    row = pb.Tensor(shape=[t.n_features], raw=_row(t.n_features))
    rows = pb.Tensor(shape=[3, t.n_features], raw=_row(t.n_features) * 3)
    predict = [
        pb.PredictRequest(experiment=t.experiment, user_id="alice", features=row),
        pb.PredictRequest(
            experiment=t.experiment,
            user_id="bob",
            request_id="fuzz-1",
            features=pb.Tensor(shape=[1, t.n_features], raw=_row(t.n_features, 2.0)),
        ),
    ]
    batches = [
        pb.PredictBatchRequest(experiment=t.experiment, user_ids=["a", "b", "c"], features=rows),
        pb.PredictBatchRequest(
            experiment=t.experiment,
            user_ids=["a", "b", "c"],
            request_ids=["r1", "r2", "r3"],
            features=rows,
        ),
    ]
    return {
        "Predict": predict,
        "PredictStream": predict,  # the messages of a stream
        "PredictBatch": batches,
        "PredictBatchStream": batches,
        "RecordOutcome": [
            pb.RecordOutcomeRequest(
                outcomes=[
                    pb.Outcome(request_id="fuzz-1", value=1.0, source="labels"),
                    pb.Outcome(request_id="fuzz-2", value=0.0),
                ]
            )
        ],
    }


def oip_seeds(t: Target) -> dict[str, list[Message]]:
    raw = oip.ModelInferRequest(model_name=t.experiment, id="oip-1")
    raw.inputs.add(name="features", datatype="FP32", shape=[2, t.n_features])
    raw.raw_input_contents.append(_row(t.n_features) * 2)
    raw.parameters["user_id"].string_param = "carol"
    typed = oip.ModelInferRequest(model_name=t.experiment)
    features = typed.inputs.add(name="features", datatype="FP32", shape=[t.n_features])
    features.contents.fp32_contents.extend([0.5] * t.n_features)
    typed.parameters["user_id"].string_param = "dave"
    typed.outputs.add(name="label")
    typed.outputs.add(name="arm")
    per_row = oip.ModelInferRequest(model_name=t.experiment)
    per_row.inputs.add(name="features", datatype="FP32", shape=[2, t.n_features])
    per_row.inputs.add(name="user_id", datatype="BYTES", shape=[2])
    per_row.raw_input_contents.append(_row(t.n_features) * 2)
    per_row.raw_input_contents.append(_bytes_tensor([b"u1", b"u2"]))
    return {
        "ModelInfer": [raw, typed, per_row],
        "ModelMetadata": [oip.ModelMetadataRequest(name=t.experiment)],
        "ModelReady": [oip.ModelReadyRequest(name=t.experiment)],
        "ServerLive": [oip.ServerLiveRequest()],
        "ServerReady": [oip.ServerReadyRequest()],
        "ServerMetadata": [oip.ServerMetadataRequest()],
    }


def definition(t: Target, name: str) -> cpb.ExperimentDefinition:
    return cpb.ExperimentDefinition(
        name=name,
        kind=cpb.AB,
        arms=[
            cpb.ArmConfig(name="control", model=t.model, weight=50.0),
            cpb.ArmConfig(name="treatment", model=t.model, weight=50.0),
        ],
        primary_metric="accuracy",
        min_samples=100,
        shadows=[cpb.ShadowConfig(name="s", model=t.model, sample_rate=0.5)],
    )


def admin_seeds(t: Target) -> dict[str, list[Message]]:
    name = t.evaluator_experiment
    operation = [
        cpb.ExperimentRequest(name=name, reason="fuzz", actor="fuzzer"),
        cpb.ExperimentRequest(name=name, arm="treatment", reason="fuzz"),
    ]
    seeds: dict[str, list[Message]] = {
        "CreateExperiment": [cpb.CreateExperimentRequest(definition=definition(t, "fuzz-new"))],
        "ListExperiments": [cpb.ListExperimentsRequest(include_archived=True)],
        "GetExperiment": [cpb.ExperimentRequest(name=name)],
        "Gateways": [cpb.GatewaysRequest()],
    }
    for method in ("Promote", "Rollback", "Pause", "Resume", "Archive", "Unarchive"):
        seeds[method] = operation
    return seeds


def config_stream_seeds() -> list[Message]:
    return [
        cpb.ConfigRequest(node_id="fuzz-gw", version=0),
        cpb.ConfigRequest(node_id="fuzz-gw", version=1, response_nonce="1"),
        cpb.ConfigRequest(
            node_id="fuzz-gw",
            version=0,
            response_nonce="2",
            error_detail=cpb.ErrorDetail(code=3, message="bad config"),
        ),
    ]


# -- mutation ---------------------------------------------------------------------------------
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, (1 << 64) - 1),
}
_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 100.0, 1e-45, 3.4e38, 1e308, math.nan, math.inf, -math.inf)
_STRING_LENGTHS = (1, 2, 63, 64, 65, 128, 129, 256, 257, 1000, 5000, 20_000, 100_000)
_WORDS = ("", "demo", "control", "treatment", "*", ":", "..", "../../etc/passwd", "user_id",
          "features", "label", "x-user-id", "FP32", "BYTES", "INT64", " ", "é", "\x00", "a\x00b",
          "\u2028", "\ud7ff", "😀", "%s%n", "'\"", "{}", "0" * 64, "f" * 64)  # fmt: skip


class Mutator:
    """Seeded mutations of protobuf messages: structured (fields set to edge values) and on
    the wire (damaged bytes)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # structured
    def structured(self, seed: Message) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            self._mutate(message, depth=0)
        return message

    def _mutate(self, message: Message, depth: int) -> None:
        fields = message.DESCRIPTOR.fields
        if not fields:
            return
        # A value the Python API refuses to hold is skipped (the wire mutations send those).
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            self._field(message, self.rng.choice(fields), depth)

    def _field(self, message: Message, f: FieldDescriptor, depth: int) -> None:
        rng = self.rng
        value = getattr(message, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            if rng.random() < 0.2:
                message.ClearField(f.name)
                return
            key = self._string() if rng.random() < 0.5 else rng.choice(("user_id", "x", ""))
            value_field = f.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                self._mutate(value[key], depth + 1)
            else:
                value[key] = self._scalar(value_field)
            return
        if f.is_repeated:
            roll = rng.random()
            if roll < 0.2:
                message.ClearField(f.name)
            elif f.message_type is not None:
                if roll < 0.5 and len(value) and depth < 4:
                    self._mutate(rng.choice(value), depth + 1)
                else:
                    for _ in range(rng.choice((1, 1, 2, 5, 50))):
                        item = value.add()
                        if value and len(value) > 1 and rng.random() < 0.5:
                            item.CopyFrom(value[0])
                        if depth < 4:
                            self._mutate(item, depth + 1)
            elif roll < 0.6 and len(value):
                value[rng.randrange(len(value))] = self._scalar(f)
            else:
                many = 50 if f.cpp_type == FieldDescriptor.CPPTYPE_STRING else 2000
                value.extend(self._scalar(f) for _ in range(rng.choice((1, 2, 5, 50, many))))
            return
        if f.message_type is not None:
            if rng.random() < 0.25:
                message.ClearField(f.name)
            elif depth < 4:
                self._mutate(value, depth + 1)
            return
        setattr(message, f.name, self._scalar(f))

    def _string(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return rng.choice(_WORDS)
        if roll < 0.7:
            return rng.choice("ab\x00é*:/") * rng.choice(_STRING_LENGTHS)
        return "".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(1, 40)))

    def _scalar(self, f: FieldDescriptor) -> Any:
        rng = self.rng
        cpp = f.cpp_type
        if cpp == FieldDescriptor.CPPTYPE_STRING:
            if f.type == FieldDescriptor.TYPE_BYTES:
                n = rng.choice((0, 1, 3, 4, 5, 7, 8, 120, 121, 4096))
                if rng.random() < 0.3:
                    return struct.pack("<I", rng.choice((0, 1, 9, 1 << 31, 0xFFFFFFFF))) + b"ab"
                return rng.randbytes(n)
            return self._string()
        if cpp in _INT_RANGES:
            lo, hi = _INT_RANGES[cpp]
            return rng.choice((lo, hi, 0, 1, -1 if lo < 0 else 2, 3, 30, 10_000, 10_001,
                               rng.randint(lo, hi)))  # fmt: skip
        if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            return rng.choice(_FLOATS)
        if cpp == FieldDescriptor.CPPTYPE_BOOL:
            return rng.random() < 0.5
        if cpp == FieldDescriptor.CPPTYPE_ENUM:
            return rng.choice((-1, 0, 1, 2, 3, 4, 99))
        raise TypeError(f"no scalar for {f.full_name}")

    # on the wire
    def wire(self, raw: bytes) -> bytes:
        rng = self.rng
        data = bytearray(raw)
        for _ in range(rng.choice((1, 1, 2, 3))):
            kind = rng.randrange(9)
            n = len(data)
            if kind == 0 and n:  # flip bits
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(n)] ^= 1 << rng.randrange(8)
            elif kind == 1 and n:  # truncate
                del data[rng.randrange(n) :]
            elif kind == 2:  # insert random bytes
                at = rng.randint(0, n)
                data[at:at] = rng.randbytes(rng.randint(1, 16))
            elif kind == 3 and n:  # delete a range
                at = rng.randrange(n)
                del data[at : at + rng.randint(1, 16)]
            elif kind == 4 and n:  # duplicate a slice
                at = rng.randrange(n)
                piece = data[at : at + rng.randint(1, 64)]
                data[at:at] = piece
            elif kind == 5:  # a field of a random number and wire type, with junk after it
                number = rng.choice((1, 2, 3, 4, 5, 14, 15, 16, 536870911))
                wire_type = rng.randrange(8)
                data += _varint((number << 3) | wire_type) + rng.randbytes(rng.randint(0, 12))
            elif kind == 6:  # a length-delimited field whose length lies
                number = rng.choice((1, 2, 3, 4))
                length = rng.choice((0, 1, 127, 128, 1 << 20, (1 << 31) - 1, (1 << 64) - 1))
                data += _varint((number << 3) | 2) + _varint(length) + b"xy"
            elif kind == 7:  # an over-long varint
                data += _varint(8) + b"\xff" * rng.choice((9, 10, 11, 20))
            else:  # junk, or nothing at all
                data = bytearray(rng.randbytes(rng.choice((0, 1, 2, 5, 64))))
        return bytes(data)

    def message(self, seed: Message) -> bytes:
        for _ in range(5):
            roll = self.rng.random()
            if roll < 0.4:
                data = self.structured(seed).SerializeToString()
            elif roll < 0.75:
                data = self.wire(seed.SerializeToString())
            else:
                data = self.wire(self.structured(seed).SerializeToString())
            if len(data) <= MAX_MESSAGE:
                return data
        return self.wire(seed.SerializeToString())


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Report:
    calls: int = 0
    messages: int = 0  # stream messages included
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the first 20, with their requests
    failed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # failures by method and status
    healthy_after: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, method: str, outcome: str) -> None:
        self.by_method.setdefault(method, Counter())[outcome] += 1

    def fail(self, method: str, what: str, request: bytes | list[bytes]) -> None:
        self.failed += 1
        self.kinds[f"{method}: {what.split(':')[0]}"] += 1
        if len(self.failures) < 20:
            first = request if isinstance(request, bytes) else b"|".join(request)
            self.failures.append(f"{method}: {what} (request {first[:120].hex()})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "messages": self.messages,
            "failed": self.failed,
            "failures": self.failures,
            "failure_kinds": dict(self.kinds.most_common()),
            "healthy_after": self.healthy_after,
            "seconds": round(self.seconds, 2),
            "by_method": {m: dict(sorted(c.items())) for m, c in sorted(self.by_method.items())},
        }


def check_details(details: str | None) -> str | None:
    """What is wrong with the details of an answer, or None."""
    text = details or ""
    if len(text) > MAX_DETAILS:
        return f"details of {len(text)} characters"
    if LEAK.search(text):
        return f"details leak internals: {text[:200]!r}"
    return None


@dataclass(frozen=True)
class _Call:
    method: str  # e.g. "native/Predict"
    path: str
    requests: list[bytes]  # one, or the messages of a stream
    metadata: tuple[tuple[str, str], ...]
    expect: grpc.StatusCode | None = None  # the one status allowed (auth checks)
    stream: bool = False


class Fuzzer:
    def __init__(
        self,
        gateway: str,
        evaluator: str | None,
        token: str,
        target: Target,
        *,
        seed: int = 1,
        deadline: float = 10.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.mutator = Mutator(self.rng)
        self.token = token
        self.deadline = deadline
        self.gateway = grpc.insecure_channel(gateway)
        self.evaluator = grpc.insecure_channel(evaluator) if evaluator else None
        self.target = target
        self.plan = self._plan()

    def close(self) -> None:
        self.gateway.close()
        if self.evaluator is not None:
            self.evaluator.close()

    def _plan(self) -> list[tuple[float, Callable[[], _Call]]]:
        """(weight, make a call) per method."""
        t = self.target
        plan: list[tuple[float, Callable[[], _Call]]] = []

        def unary(group: str, prefix: str, name: str, seeds: list[Message], w: float) -> None:
            plan.append((w, lambda: self._unary(f"{group}/{name}", prefix + name, seeds)))

        for name, seeds in native_seeds(t).items():
            if name in _ANSWERED_STREAMS:
                plan.append((3.0, lambda n=name, s=seeds: self._predict_stream(n, s)))
            else:
                unary("native", NATIVE, name, seeds, 3.0 if name == "Predict" else 2.0)
        for name, seeds in oip_seeds(t).items():
            unary("oip", OIP, name, seeds, 3.0 if name == "ModelInfer" else 1.0)
        health = [
            health_pb2.HealthCheckRequest(service=""),
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"),
        ]
        plan.append((1.0, lambda: self._unary("health/Check", HEALTH_CHECK, health)))
        if self.evaluator is not None:
            for name, seeds in admin_seeds(t).items():
                weight = 0.5 if name in ("Pause", "Resume", "Archive", "Unarchive") else 1.0
                plan.append(
                    (weight, lambda n=name, s=seeds: self._admin(f"admin/{n}", ADMIN + n, s))
                )
            streams = config_stream_seeds()
            plan.append((1.0, lambda: self._config_stream(streams)))
        return plan

    # building calls
    def _mutated(self, seeds: list[Message]) -> bytes:
        seed = self.rng.choice(seeds)
        return seed.SerializeToString() if self.rng.random() < 0.05 else self.mutator.message(seed)

    def _unary(self, method: str, path: str, seeds: list[Message]) -> _Call:
        metadata: tuple[tuple[str, str], ...] = ()
        if method == "oip/ModelInfer" and self.rng.random() < 0.3:
            user = self.rng.choice(("", " ", "h" * 300, "user-7", "a b"))
            metadata = (("x-user-id", user),)
        return _Call(method, path, [self._mutated(seeds)], metadata)

    def _predict_stream(self, name: str, seeds: list[Message]) -> _Call:
        n = self.rng.randint(1, 5)
        requests = [
            self.rng.choice(seeds).SerializeToString()
            if self.rng.random() < 0.3
            else self._mutated(seeds)
            for _ in range(n)
        ]
        return _Call(f"native/{name}", NATIVE + name, requests, (), stream=True)

    def _auth(self) -> tuple[tuple[tuple[str, str], ...], grpc.StatusCode | None]:
        good = ("authorization", f"Bearer {self.token}")
        roll = self.rng.random()
        if roll < 0.85:
            return (good,), None
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        if roll < 0.9:
            return (), unauthenticated
        if roll < 0.95:
            return (("authorization", f"Bearer {self.token}x"),), unauthenticated
        wrong = ("authorization", "Bearer nope")
        return ((good, wrong) if self.rng.random() < 0.5 else (wrong, good)), unauthenticated

    def _admin(self, method: str, path: str, seeds: list[Message]) -> _Call:
        metadata, expect = self._auth()
        return _Call(method, path, [self._mutated(seeds)], metadata, expect)

    def _config_stream(self, seeds: list[Message]) -> _Call:
        metadata, expect = self._auth()
        n = self.rng.randint(0, 3)
        requests = [self._mutated(seeds) for _ in range(n)]
        return _Call("admin/StreamConfig", STREAM_CONFIG, requests, metadata, expect, stream=True)

    def calls(self, n: int) -> Iterator[_Call]:
        """``n`` calls, every method among the first ones, then drawn by weight."""
        weights = [w for w, _ in self.plan]
        for i in range(n):
            if i < len(self.plan):
                yield self.plan[i][1]()
            else:
                yield self.rng.choices(self.plan, weights)[0][1]()

    # running them
    def _channel(self, call: _Call) -> grpc.Channel:
        if call.path.startswith((ADMIN, STREAM_CONFIG)):
            assert self.evaluator is not None
            return self.evaluator
        return self.gateway

    def _judge(
        self,
        report: Report,
        call: _Call,
        code: grpc.StatusCode,
        details: str | None,
        request: bytes | list[bytes],
    ) -> None:
        report.count(call.method, code.name)
        if call.expect is not None and code != call.expect:
            report.fail(call.method, f"{code.name}, expected {call.expect.name}", request)
        elif code in BAD_CODES:
            report.fail(call.method, f"{code.name}: {(details or '')[:200]!r}", request)
        else:
            problem = check_details(details)
            if problem is not None:
                report.fail(call.method, f"{code.name}: {problem}", request)

    def _run_stream(self, report: Report, call: _Call) -> None:
        fn = self._channel(call).stream_stream(call.path)
        answers: list[bytes] = []
        try:
            answers.extend(fn(iter(call.requests), metadata=call.metadata, timeout=self.deadline))
            code, details = grpc.StatusCode.OK, None
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        self._judge(report, call, code, details, call.requests)
        answer_type = _ANSWERED_STREAMS.get(call.method.removeprefix("native/"))
        if answer_type is None or code != grpc.StatusCode.OK:
            if answer_type is not None:
                report.fail(call.method, f"the stream ended with {code.name}", call.requests)
            return
        if len(answers) != len(call.requests):
            what = f"{len(answers)} answers to {len(call.requests)} messages"
            report.fail(call.method, what, call.requests)
        for raw in answers:
            answer = answer_type.FromString(raw)
            outcome = grpc.StatusCode.OK.name
            if answer.error_code:
                outcome = "message:" + _code_name(answer.error_code)
                problem = check_details(answer.error_message)
                if answer.error_code in BAD_CODE_VALUES or problem is not None:
                    report.fail(
                        call.method,
                        f"a message answered {outcome}: {answer.error_message[:200]!r}",
                        call.requests,
                    )
            report.count(call.method, outcome)

    def run(self, n: int, on_progress: Callable[[Report], None] | None = None) -> Report:
        report = Report()
        started = time.monotonic()
        pending: list[tuple[_Call, Any]] = []

        def settle(keep: int) -> None:
            while len(pending) > keep:
                call, future = pending.pop(0)
                try:
                    future.result()
                    code, details = grpc.StatusCode.OK, None
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                self._judge(report, call, code, details, call.requests[0])

        for call in self.calls(n):
            report.calls += 1
            report.messages += len(call.requests)
            if call.stream:
                self._run_stream(report, call)
            else:
                fn = self._channel(call).unary_unary(call.path)
                future = fn.future(call.requests[0], metadata=call.metadata, timeout=self.deadline)
                pending.append((call, future))
                settle(WINDOW)
            if on_progress is not None and report.calls % 5000 == 0:
                on_progress(report)
        settle(0)
        report.healthy_after = self.healthy()
        report.seconds = time.monotonic() - started
        return report

    def healthy(self) -> dict[str, str]:
        """A good request of each API, after the run: method -> status name."""
        t = self.target
        good = [
            ("native/Predict", self.gateway, NATIVE + "Predict", native_seeds(t)["Predict"][0]),
            ("oip/ModelInfer", self.gateway, OIP + "ModelInfer", oip_seeds(t)["ModelInfer"][0]),
        ]
        if self.evaluator is not None:
            listed = cpb.ListExperimentsRequest()
            good.append(
                ("admin/ListExperiments", self.evaluator, ADMIN + "ListExperiments", listed)
            )
        out = {}
        for method, channel, path, request in good:
            try:
                channel.unary_unary(path)(
                    request.SerializeToString(),
                    metadata=(("authorization", f"Bearer {self.token}"),),
                    timeout=self.deadline,
                )
                out[method] = "OK"
            except grpc.RpcError as exc:
                out[method] = exc.code().name
        return out


def _code_name(value: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return str(value)


def create_seed_experiment(evaluator: str, token: str, target: Target) -> None:
    """The experiment the admin seeds operate on."""
    with grpc.insecure_channel(evaluator) as channel:
        create = channel.unary_unary(
            ADMIN + "CreateExperiment",
            request_serializer=cpb.CreateExperimentRequest.SerializeToString,
        )
        create(
            cpb.CreateExperimentRequest(definition=definition(target, target.evaluator_experiment)),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )


# -- the long run against real processes -------------------------------------------------------
def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "abgate", *args], env=env, stdout=out, stderr=out
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _log_counts(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    return {
        "lines": text.count("\n"),
        "tracebacks": text.count("Traceback"),
        "undecodable_lines": text.count("undecodable request(s)"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    args = parser.parse_args(argv)

    from abgate.addresses import free_port
    from abgate.db.embedded import EmbeddedPostgres
    from abgate.demo import wait_serving
    from converters.demo import train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    token = os.urandom(16).hex()
    with tempfile.TemporaryDirectory(prefix="abgate-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        metas = train_demo_models(ModelStore(tmp / "models"))
        config = write_demo_config(tmp / "experiments.toml", metas)
        logreg = next(m for m in metas if m.id == "demo-logreg")
        target = Target("demo", logreg.n_features, logreg.sha256)
        # Tokens in the environment, as the README recommends.
        env = {**os.environ, "ABGATE_TOKEN": token, "ABGATE_EVALUATOR_TOKEN": token}
        ev_target = f"127.0.0.1:{free_port()}"
        gw_target = f"127.0.0.1:{free_port()}"
        logs = {"evaluator": tmp / "evaluator.log", "gateway": tmp / "gateway.log"}
        with EmbeddedPostgres(tmp / "pg") as pg:
            evaluator = ["evaluator", "--listen", ev_target, "--database-url", pg.url]
            procs = [_start(evaluator, env, logs["evaluator"])]
            try:
                serve = ["serve", "--listen", gw_target, "--config", str(config),
                         "--model-store", str(tmp / "models"), "--state-dir", str(tmp / "state"),
                         "--database-url", pg.url]  # fmt: skip
                procs.append(_start(serve, env, logs["gateway"]))
                wait_serving(ev_target, timeout=90, proc=procs[0])
                wait_serving(gw_target, timeout=90, proc=procs[1])
                create_seed_experiment(ev_target, token, target)
                t0 = time.monotonic()

                def progress(r: Report) -> None:
                    elapsed = time.monotonic() - t0
                    print(f"{r.calls} calls, {r.failed} bad, {elapsed:.0f} s", file=sys.stderr)

                fuzzer = Fuzzer(gw_target, ev_target, token, target, seed=args.seed)
                try:
                    report = fuzzer.run(args.calls, progress)
                finally:
                    fuzzer.close()
                alive = {name: p.poll() is None for name, p in zip(logs, procs, strict=True)}
            finally:
                _stop(procs)
        server_logs = {name: _log_counts(path) for name, path in logs.items()}
    out = {
        "seed": args.seed,
        "processes_alive": alive,
        "server_logs": server_logs,
        **report.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    ok = (
        report.failed == 0
        and all(alive.values())
        and set(report.healthy_after.values()) == {"OK"}
        and not any(c["tracebacks"] for c in server_logs.values())
    )
    print(
        f"{report.calls} calls ({report.messages} messages) in {report.seconds:.1f} s: "
        f"{report.failed} bad; healthy after: {report.healthy_after}; alive: {alive}; "
        f"server logs: {server_logs}"
    )
    for line in report.failures:
        print("  " + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
