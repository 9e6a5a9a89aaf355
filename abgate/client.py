"""The typed Python client a service imports (issue #17): ``Client`` (blocking) and
``AsyncClient`` (asyncio), over the gateway's native gRPC API, numpy in and out.

Retries only where they are safe: every call carries request ids (generated here when the
caller gives none), and the gateway answers a repeated request id with the first answer and
logs it once (README "One prediction per request id"); an outcome is kept once per
(request_id, source). So a call that failed with UNAVAILABLE, or that ran out of time before an
answer came, is sent again with the same ids, with exponential backoff, inside the one deadline
of the call; any other status is raised at once as ``RpcFailure``. A stream is never retried
(its answers may have been delivered).

    from abgate.client import Client
    with Client("127.0.0.1:50051", timeout=0.5) as gw:
        p = gw.predict("checkout", user_id="u-42", features=x)          # x: 1-D array
        print(p.arm, p.label, p.scores)
        batch = gw.predict_batch("checkout", ["u-1", "u-2"], X)         # X: [n, features]
        print(batch.arms, batch.labels, batch.scores.shape)
        for answer in gw.stream_batches("checkout", [(["u-3", "u-4"], X)]):  # Batch/RpcFailure
            print(answer)
        gw.record_outcome(p.request_id, 1.0, source="clicks")

``GatewayClient`` is the older, dict-returning client the CLI, the demo and the tests use.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc

T = TypeVar("T")


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


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
BACKOFF = (0.01, 0.5)  # first wait and cap, seconds; doubled after each attempt


@dataclass(frozen=True)
class Prediction:
    request_id: str
    experiment: str
    arm: str
    model_id: str
    model_version: str
    model_sha256: str
    label: int
    scores: np.ndarray  # float32, the model's class order
    config_version: int
    bucket: int


@dataclass(frozen=True)
class Batch:
    """A PredictBatch answer, one entry per row."""

    experiment: str
    config_version: int
    request_ids: list[str]
    arms: list[str]  # the arm that served each row
    buckets: np.ndarray  # uint32
    labels: np.ndarray  # int64
    scores: np.ndarray  # float32, [rows, classes]


def _prediction(r: pb.PredictResponse) -> Prediction:
    return Prediction(
        r.request_id, r.experiment, r.arm, r.model.id, r.model.version, r.model.sha256,
        int(r.label), np.asarray(r.scores, dtype=np.float32), int(r.config_version),
        int(r.bucket),
    )  # fmt: skip


def _batch(r: pb.PredictBatchResponse) -> Batch:
    shape = tuple(r.scores.shape) or (len(r.labels), 0)
    scores = np.frombuffer(r.scores.raw, dtype="<f4").reshape(shape).copy()
    names = [a.name for a in r.arms]
    return Batch(
        r.experiment, int(r.config_version), list(r.request_ids),
        [names[i] for i in r.arm_index], np.asarray(r.buckets, dtype=np.uint32),
        np.asarray(r.labels, dtype=np.int64), scores,
    )  # fmt: skip


def _request(experiment: str, user_id: str, features: Any, request_id: str) -> pb.PredictRequest:
    row = np.asarray(features, dtype=np.float32)
    if row.ndim != 1:
        raise ValueError(f"features must be one row (1-D), not shape {row.shape}")
    return pb.PredictRequest(
        experiment=experiment,
        user_id=user_id,
        features=features_tensor(row),
        request_id=request_id or _new_id(),
    )


def _batch_request(
    experiment: str, user_ids: Sequence[str], rows: Any, request_ids: Sequence[str]
) -> pb.PredictBatchRequest:
    X = np.asarray(rows, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != len(user_ids):
        raise ValueError(f"rows must be [len(user_ids)={len(user_ids)}, features], not {X.shape}")
    ids = list(request_ids) or [_new_id() for _ in user_ids]
    if len(ids) != len(user_ids):
        raise ValueError("request_ids must be empty or one per row")
    return pb.PredictBatchRequest(experiment=experiment, user_ids=list(user_ids),
                                  features=features_tensor(X), request_ids=ids)  # fmt: skip


def _outcomes(items: Iterable[tuple[str, float, str]]) -> pb.RecordOutcomeRequest:
    return pb.RecordOutcomeRequest(
        outcomes=[pb.Outcome(request_id=r, value=float(v), source=s) for r, v, s in items]
    )


def _new_id() -> str:
    return uuid.uuid4().hex


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]  # fmt: skip


class _Options:
    """What both clients are made with: ``target`` host:port; ``timeout``: each call's
    deadline in seconds, retries included; ``token``: a gateway's client bearer token;
    ``retries``: tries after the first on UNAVAILABLE."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        token: str = "",
        retries: int = 3,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self.timeout, self.retries = timeout, retries
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.channel = self._channel(target, _channel_options(max_message_bytes))
        self.stub = pb_grpc.InferenceGatewayStub(self.channel)

    def _channel(self, target: str, options: list[tuple[str, int]]) -> Any:
        raise NotImplementedError


class Client(_Options):
    """Blocking client of one gateway (see ``_Options`` for the arguments)."""

    def _channel(self, target: str, options: list[tuple[str, int]]) -> Any:
        return grpc.insecure_channel(target, options=options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        wait = BACKOFF[0]
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            try:
                return method(request, timeout=max(left, 0.001), metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == self.retries or left <= wait:
                    raise RpcFailure(code, exc.details() or "") from None
            time.sleep(wait)
            wait = min(wait * 2, BACKOFF[1])
        raise AssertionError("unreachable")  # pragma: no cover

    def predict(
        self, experiment: str, user_id: str, features: Any, *, request_id: str = "",
        timeout: float | None = None,
    ) -> Prediction:  # fmt: skip
        req = _request(experiment, user_id, features, request_id)
        return _prediction(self._call(self.stub.Predict, req, timeout))

    def predict_batch(
        self, experiment: str, user_ids: Sequence[str], rows: Any, *,
        request_ids: Sequence[str] = (), timeout: float | None = None,
    ) -> Batch:  # fmt: skip
        req = _batch_request(experiment, user_ids, rows, request_ids)
        return _batch(self._call(self.stub.PredictBatch, req, timeout))

    def stream(
        self, experiment: str, rows: Iterable[tuple[str, Any]], *, timeout: float | None = None
    ) -> Iterator[Prediction | RpcFailure]:
        """One PredictStream: (user_id, features) in, a Prediction (or the RpcFailure of that
        one message; the stream goes on) out per row, in order. Not retried."""
        requests = (_request(experiment, u, x, "") for u, x in rows)
        call = self.stub.PredictStream(requests, timeout=timeout, metadata=self.metadata)
        return _answers(call, _prediction)

    def stream_batches(
        self, experiment: str, batches: Iterable[tuple[Sequence[str], Any]], *,
        timeout: float | None = None,
    ) -> Iterator[Batch | RpcFailure]:  # fmt: skip
        """One PredictBatchStream: (user_ids, rows) in, a Batch (or the RpcFailure of that one
        message; the stream goes on) out per message, in order. Not retried."""
        requests = (_batch_request(experiment, u, x, ()) for u, x in batches)
        call = self.stub.PredictBatchStream(requests, timeout=timeout, metadata=self.metadata)
        return _answers(call, _batch)

    def record_outcome(
        self, request_id: str, value: float, *, source: str = "", timeout: float | None = None
    ) -> int:
        return self.record_outcomes([(request_id, value, source)], timeout=timeout)

    def record_outcomes(
        self, outcomes: Iterable[tuple[str, float, str]], *, timeout: float | None = None
    ) -> int:
        """(request_id, value, source) triples; how many the gateway accepted."""
        return int(self._call(self.stub.RecordOutcome, _outcomes(outcomes), timeout).accepted)


def _answers(call: Iterable[Any], convert: Callable[[Any], T]) -> Iterator[T | RpcFailure]:
    """A stream's answers: ``convert(response)``, or the RpcFailure of that one message; a
    status ending the stream is raised as RpcFailure."""
    try:
        for r in call:
            if r.error_code:
                yield RpcFailure(grpc.StatusCode(_code(r.error_code)), r.error_message)
            else:
                yield convert(r.response)
    except grpc.RpcError as exc:
        raise RpcFailure(exc.code(), exc.details() or "") from None


async def _async_answers(
    call: AsyncIterable[Any], convert: Callable[[Any], T]
) -> AsyncIterator[T | RpcFailure]:
    try:
        async for r in call:
            if r.error_code:
                yield RpcFailure(grpc.StatusCode(_code(r.error_code)), r.error_message)
            else:
                yield convert(r.response)
    except grpc.aio.AioRpcError as exc:
        raise RpcFailure(exc.code(), exc.details() or "") from None


def _code(number: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


class AsyncClient(_Options):
    """The same calls on asyncio (``grpc.aio``); use ``async with``."""

    def _channel(self, target: str, options: list[tuple[str, int]]) -> Any:
        return grpc.aio.insecure_channel(target, options=options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        wait = BACKOFF[0]
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            try:
                return await method(request, timeout=max(left, 0.001), metadata=self.metadata)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == self.retries or left <= wait:
                    raise RpcFailure(code, exc.details() or "") from None
            await asyncio.sleep(wait)
            wait = min(wait * 2, BACKOFF[1])
        raise AssertionError("unreachable")  # pragma: no cover

    async def predict(
        self, experiment: str, user_id: str, features: Any, *, request_id: str = "",
        timeout: float | None = None,
    ) -> Prediction:  # fmt: skip
        req = _request(experiment, user_id, features, request_id)
        return _prediction(await self._call(self.stub.Predict, req, timeout))

    async def predict_batch(
        self, experiment: str, user_ids: Sequence[str], rows: Any, *,
        request_ids: Sequence[str] = (), timeout: float | None = None,
    ) -> Batch:  # fmt: skip
        req = _batch_request(experiment, user_ids, rows, request_ids)
        return _batch(await self._call(self.stub.PredictBatch, req, timeout))

    async def stream(
        self, experiment: str, rows: Iterable[tuple[str, Any]], *, timeout: float | None = None
    ) -> AsyncIterator[Prediction | RpcFailure]:
        requests = [_request(experiment, u, x, "") for u, x in rows]
        call = self.stub.PredictStream(iter(requests), timeout=timeout, metadata=self.metadata)
        async for answer in _async_answers(call, _prediction):
            yield answer

    async def stream_batches(
        self, experiment: str, batches: Iterable[tuple[Sequence[str], Any]], *,
        timeout: float | None = None,
    ) -> AsyncIterator[Batch | RpcFailure]:  # fmt: skip
        requests = [_batch_request(experiment, u, x, ()) for u, x in batches]
        call = self.stub.PredictBatchStream(iter(requests), timeout=timeout, metadata=self.metadata)
        async for answer in _async_answers(call, _batch):
            yield answer

    async def record_outcome(
        self, request_id: str, value: float, *, source: str = "", timeout: float | None = None
    ) -> int:
        return await self.record_outcomes([(request_id, value, source)], timeout=timeout)

    async def record_outcomes(
        self, outcomes: Iterable[tuple[str, float, str]], *, timeout: float | None = None
    ) -> int:
        req = _outcomes(outcomes)
        return int((await self._call(self.stub.RecordOutcome, req, timeout)).accepted)
