"""gRPC servicer for ``abgate.v1.InferenceGateway``: decode, call the data plane, encode.

``_fail`` is the one place where exceptions become gRPC statuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from abgate.errors import AbgateError, FailedPrecondition, InvalidArgument, PermissionDenied
from abgate.surface import UNDECODABLE_MESSAGE, note_undecodable
from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc
from gateway import codec
from gateway.auth import CLIENT_IDENTITY
from gateway.dataplane import DataPlane, synced
from gateway.idempotency import ANSWER, EXPERIMENT, IDENTITY, KEY, USER, Entry, Failed

log = logging.getLogger(__name__)

R = TypeVar("R")

INTERNAL_MESSAGE = "internal error"
REUSED_MESSAGE = "already used for another request; give each request its own id"
FOREIGN_OUTCOME_MESSAGE = (
    "is a prediction another client made; only that client may record its outcome"
)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceGateway"].full_name
_STREAM_METHOD = f"{SERVICE_NAME}/PredictStream"
_BATCH_STREAM_METHOD = f"{SERVICE_NAME}/PredictBatchStream"
# PredictStream's answer to a message that does not parse (it has no request id to echo).
_UNDECODABLE_ANSWER = codec.encode_stream_error(
    grpc.StatusCode.INVALID_ARGUMENT.value[0], UNDECODABLE_MESSAGE, ""
)
_UNDECODABLE_BATCH_ANSWER = codec.encode_batch_stream_error(
    grpc.StatusCode.INVALID_ARGUMENT.value[0], UNDECODABLE_MESSAGE
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Domain errors carry their code and message; anything else is INTERNAL, details hidden."""
    if isinstance(exc, AbgateError):
        return exc.code, exc.message
    log.exception("unexpected error serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _fail(context: grpc.aio.ServicerContext, exc: BaseException, empty: R) -> R:
    code, message = status_of(exc)
    context.set_code(code)
    context.set_details(message)
    return empty


class GatewayServicer(pb_grpc.InferenceGatewayServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        executor: Executor,
        *,
        max_batch_rows: int,
        offload_rows: int,
        allow_cross_identity_outcomes: bool = False,
        durable: bool = False,
    ) -> None:
        self._dp = dataplane
        # --log-durability local: an answer waits for its log row's fsync (gateway.wal).
        self._durable = durable
        self._executor = executor
        self._max_batch_rows = max_batch_rows
        self._offload_rows = offload_rows
        self._cross = allow_cross_identity_outcomes

    def _predict(self, request: pb.PredictRequest) -> tuple[bytes, str]:
        """A serialized PredictResponse (see codec.encode_prediction_raw for why bytes) and
        its request id."""
        started = time.time()
        dp = self._dp
        exp = dp.experiment(request.experiment)
        user_id = request.user_id
        codec.check_user_id(user_id)
        identity = CLIENT_IDENTITY.get()
        recent = dp.recent
        request_id = request.request_id
        if request_id:
            codec.check_request_id(request_id)
            seen = recent.get(request_id, started)
            if seen is not None:  # a retry: the original answer, not a second prediction
                return self._repeat(seen, identity, exp.name, user_id), request_id
        else:
            request_id = dp.next_request_id()
        row = codec.decode_row(request.features, exp.n_features)
        bucket, arm = dp.route(exp, user_id)
        # Inline on the event loop: a thread hop costs more than the model (docs/design.md).
        try:
            labels, scores = arm.variant.run(row)
        except Exception as exc:
            code = exc.code if isinstance(exc, AbgateError) else grpc.StatusCode.INTERNAL
            dp.log_failure(exp, arm, bucket, request_id, code.value[0], started)
            # The failure row is this request's prediction: a retry gets the same failure.
            message = exc.message if isinstance(exc, AbgateError) else INTERNAL_MESSAGE
            recent.put((request_id, started, identity, exp.name, user_id, Failed(code, message)))
            raise
        label, row_scores = int(labels[0]), scores[0]
        dp.log_prediction(exp, arm, bucket, request_id, label, row_scores, started, row)
        if exp.shadows and dp.mirror is not None:
            dp.mirror.submit(exp, row, (request_id,), (bucket,))
        raw = codec.encode_prediction_raw(
            arm.response_prefix, request_id, label, row_scores, bucket
        )
        recent.put((request_id, started, identity, exp.name, user_id, raw))
        return raw, request_id

    def _repeat(self, seen: Entry, identity: str, experiment: str, user_id: str) -> bytes:
        """The answer of a request id seen before, if this call can be that request's retry."""
        recent = self._dp.recent
        answer = seen[ANSWER]
        if (
            not isinstance(seen[KEY], str)  # a row of a PredictBatch
            or not isinstance(answer, bytes | Failed)  # an OIP ModelInfer
            or seen[IDENTITY] != identity
            or seen[EXPERIMENT] != experiment
            or seen[USER] != user_id
        ):
            raise recent.conflict(REUSED_MESSAGE, field="request_id")
        recent.repeats += 1
        if isinstance(answer, Failed):
            raise Failed(answer.code, answer.message)
        return answer

    def _batch_repeat(
        self, request_ids: Sequence[str], identity: str, experiment: str, now: float
    ) -> Any:
        """The original answer when ``request_ids`` are those of an earlier batch (its retry),
        None when none of them was seen; ALREADY_EXISTS for any other overlap."""
        recent = self._dp.recent
        if not recent.any_of(request_ids):
            return None
        key = tuple(request_ids)
        hits = [(i, e) for i, e in enumerate(map(recent.get, key, (now,) * len(key))) if e]
        if not hits:
            return None  # only expired entries
        j, entry = hits[0]
        field = f"request_ids[{j}]"
        if (
            entry[KEY] != key
            or not isinstance(entry[ANSWER], list)  # an OIP ModelInfer's rows
            or len(hits) != len(key)
            or entry[IDENTITY] != identity
            or entry[EXPERIMENT] != experiment
        ):
            raise recent.conflict(REUSED_MESSAGE, field=field)
        answer = entry[ANSWER][0]
        if answer is None:
            raise recent.conflict("a call with this id is still running", field=field)
        recent.repeats += 1
        return answer

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        try:
            raw = self._predict(request)[0]
            if self._durable:
                await synced(self._dp)
            return raw
        except Exception as exc:
            return _fail(context, exc, b"")

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictBatchResponse:
        try:
            return await self._predict_batch(request)
        except Exception as exc:
            return _fail(context, exc, pb.PredictBatchResponse())

    async def _predict_batch(self, request: pb.PredictBatchRequest) -> pb.PredictBatchResponse:
        started = time.time()
        dp = self._dp
        exp = dp.experiment(request.experiment)
        user_ids = request.user_ids
        n = len(user_ids)
        if n == 0:
            raise InvalidArgument("must hold at least one user id", field="user_ids")
        if n > self._max_batch_rows:
            raise InvalidArgument(
                f"{n} rows exceed the limit of {self._max_batch_rows}", field="user_ids"
            )
        for i, user_id in enumerate(user_ids):
            codec.check_user_id(user_id, field=f"user_ids[{i}]")
        identity = CLIENT_IDENTITY.get()
        request_ids = codec.request_ids_or_empty(request.request_ids, n)
        if request_ids:
            repeated = self._batch_repeat(request_ids, identity, exp.name, started)
            if repeated is not None:
                return repeated
        else:
            request_ids = dp.new_request_ids(n)
        matrix = codec.decode_matrix(request.features, n, exp.n_features)
        dp.admit_rows(n)  # a full log refuses the call before its model runs
        buckets = dp.route_batch(exp, user_ids)
        # Taken before the batch may wait on a thread: a repeat meanwhile is refused.
        box: list[Any] = [None]
        entry = (tuple(request_ids), started, identity, exp.name, "", box)
        recent = dp.recent
        recent.put(entry, n)
        try:
            if n >= self._offload_rows:
                # Big batches would stall every other call on the event loop; onnxruntime
                # releases the GIL, so a thread lets small calls through meanwhile.
                result = await dp.offload(
                    self._executor, dp.predict_batch, exp, buckets, matrix, list(request_ids)
                )
            else:
                result = dp.predict_batch(exp, buckets, matrix, request_ids)
            dp.log_batch(result, started, matrix, exp.feature_threshold)
        except BaseException:
            recent.discard(entry)  # nothing logged: the ids are free for a retry
            raise
        if exp.shadows and dp.mirror is not None:
            dp.mirror.submit(exp, matrix, result.request_ids, result.buckets.tolist())
        box[0] = response = codec.encode_batch(result)
        if self._durable:
            await synced(dp)
        return response

    async def PredictStream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # A bad message fails only itself: its status travels in the answer, the stream stays.
        # That holds for one that does not parse too, so the messages arrive as bytes and are
        # decoded here (the surface would end the stream).
        decode = pb.PredictRequest.FromString
        async for raw_request in request_iterator:
            try:
                request = decode(raw_request)
            except Exception:
                note_undecodable(_STREAM_METHOD)
                yield _UNDECODABLE_ANSWER
                continue
            try:
                raw, request_id = self._predict(request)
                if self._durable:
                    await synced(self._dp)
                yield codec.encode_stream_raw(raw, request_id)
            except Exception as exc:
                code, message = status_of(exc)
                yield codec.encode_stream_error(code.value[0], message, request.request_id)

    async def PredictBatchStream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """PredictBatch per message, one answer each in order; as in PredictStream a bad
        message (one that does not parse too) fails only itself."""
        decode = pb.PredictBatchRequest.FromString
        async for raw_request in request_iterator:
            try:
                request = decode(raw_request)
            except Exception:
                note_undecodable(_BATCH_STREAM_METHOD)
                yield _UNDECODABLE_BATCH_ANSWER
                continue
            try:
                response = await self._predict_batch(request)
                yield codec.encode_batch_stream_raw(response.SerializeToString())
            except Exception as exc:
                code, message = status_of(exc)
                yield codec.encode_batch_stream_error(code.value[0], message)

    async def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        try:
            writer = self._dp.outcomes
            if writer is None:
                raise FailedPrecondition("this gateway runs with prediction logging off")
            n = len(request.outcomes)
            if n > self._max_batch_rows:
                raise InvalidArgument(
                    f"{n} outcomes exceed the limit of {self._max_batch_rows}", field="outcomes"
                )
            now = time.time()
            rows = codec.decode_outcomes(request.outcomes, now)
            identity = CLIENT_IDENTITY.get()
            cross = self._cross
            if identity and not cross:
                # Predictions this process answered recently are checked here; the evaluator
                # ignores any other outcome whose identity is not its prediction's.
                recent = self._dp.recent
                for i, r in enumerate(rows):
                    seen = recent.get(r[0], now)
                    if seen is not None and seen[IDENTITY] != identity:
                        recent.foreign_outcomes += len(rows)  # the call is refused whole
                        raise PermissionDenied(
                            FOREIGN_OUTCOME_MESSAGE, field=f"outcomes[{i}].request_id"
                        )
            logged = [(*r, identity, cross) for r in rows]
            writer.extend(logged)  # all or none: UNAVAILABLE when they do not all fit
            if self._durable:
                fut = writer.synced()
                if fut is not None:
                    await fut
            return pb.RecordOutcomeResponse(accepted=len(logged))
        except Exception as exc:
            return _fail(context, exc, pb.RecordOutcomeResponse())

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Registration with pass-through serializers for the hand-encoded answers."""
        req_single = pb.PredictRequest.FromString
        return {
            "Predict": grpc.unary_unary_rpc_method_handler(
                self.Predict,
                request_deserializer=req_single,
                response_serializer=codec.passthrough,
            ),
            "PredictBatch": grpc.unary_unary_rpc_method_handler(
                self.PredictBatch,
                request_deserializer=pb.PredictBatchRequest.FromString,
                response_serializer=pb.PredictBatchResponse.SerializeToString,
            ),
            "RecordOutcome": grpc.unary_unary_rpc_method_handler(
                self.RecordOutcome,
                request_deserializer=pb.RecordOutcomeRequest.FromString,
                response_serializer=pb.RecordOutcomeResponse.SerializeToString,
            ),
            "PredictStream": grpc.stream_stream_rpc_method_handler(
                self.PredictStream,
                request_deserializer=None,  # decoded per message by PredictStream itself
                response_serializer=codec.passthrough,
            ),
            "PredictBatchStream": grpc.stream_stream_rpc_method_handler(
                self.PredictBatchStream,
                request_deserializer=None,  # as PredictStream
                response_serializer=codec.passthrough,
            ),
        }
