"""Open Inference Protocol V2 (``inference.GRPCInferenceService``): the thin servicer (its codec is
``gateway.oip_codec``), so KServe, Triton and MLServer clients call the gateway unchanged.

Semantics (the OIP view of an experiment):

- **Model = experiment.** ``model_name`` is the experiment name; the arm is chosen by routing the
  user, as in the native API, so a client cannot pick a version: a non-empty ``model_version`` in
  a request is INVALID_ARGUMENT (``model_version``), and ModelMetadata lists ``versions: []``.
- **model_version in answers** is ``"<arm>@<config_version>"`` (``control@3``): the arm that
  answered and the config version that routed. Arm names never contain ``*``, so a request with
  per-row user ids whose rows went to different arms answers ``"*@<config_version>"``.
- **Health.** ServerLive: always true. ServerReady: true once a config is loaded and while not
  draining. ModelReady: true when the experiment is in the current snapshot; false (status OK,
  as Triton and MLServer answer) for an unknown model, a non-empty version, or before a config
  is loaded. ServerMetadata: ``abgate``, ``abgate.__version__``, ``extensions: []``.
- **ModelMetadata**: platform ``onnxruntime_onnx``; input ``features`` FP32 ``[-1, n_features]``;
  outputs ``label`` INT64 ``[-1]`` and ``probabilities`` FP32 ``[-1, n_classes]``. Unknown model:
  NOT_FOUND (``model_name``).
- **ModelInfer input**: one FP32 tensor of shape ``[n, n_features]`` (or ``[n_features]``: one
  row), whatever its name, with at most ``--max-batch-rows`` rows; its data either in
  ``raw_input_contents`` (little-endian float32; then every input is raw and no input sets
  ``contents``) or in ``contents.fp32_contents``. NaN/Inf, the wrong byte or value count, another
  datatype are rejected exactly as in the native API (field ``features``/``features.shape``).
- **User**: the string request parameter ``user_id``, else the gRPC metadata header
  ``x-user-id``; every row belongs to that user (one bucket, one arm). Or per row: an extra
  BYTES input named ``user_id`` of shape ``[n]`` routes each row by its own user, vectorised like
  ``PredictBatch`` (then the parameter must not be given as well; the header is ignored).
  Missing or empty: INVALID_ARGUMENT ``user_id`` (``user_id[i]`` per row).
- **Request id**: the request's ``id`` (≤ 128 bytes, field ``id``) or a generated one; it is the
  answer's ``id``. A one-row request is logged under that id (the idempotency key, as
  ``Predict``); row *i* of a multi-row request is logged as ``"<id>:<i>"``.
- **Retries**: a request that repeats an ``id`` within ``--idempotency-window`` gets the
  original answer again and is neither run nor logged a second time (as ``Predict``); the same
  id for a call that cannot be its retry (another client, model, user or users, row count,
  outputs, raw or typed), or for a native call's id, is ALREADY_EXISTS (field ``id``).
- **Outputs**: ``label`` (INT64 ``[n]``) and ``probabilities`` (FP32 ``[n, n_classes]``) by
  default; a request naming ``outputs`` gets those, in its order, and may also ask for the
  per-row ``arm`` (BYTES), ``bucket`` (INT64) and ``request_id`` (BYTES), all ``[n]``. An
  unknown name is INVALID_ARGUMENT (``outputs[i].name``). A request sent with
  ``raw_input_contents`` is answered with ``raw_output_contents`` (in the order of ``outputs``),
  otherwise with typed ``contents``.
- **Answer parameters**: ``request_id`` (string), ``config_version`` and ``hash_version``
  (int64); when every row went to one arm also ``arm``, ``model_id``, ``model_sha256`` (string);
  with a single user also ``bucket`` (int64).
- **Triton's extensions**: ModelStreamInfer (ModelInfer per message, in order; errors in
  ``error_message`` as ``CODE: message``, the stream open), ModelConfig
  (``oip_codec.model_config``), RepositoryIndex (the snapshot's experiments, READY or
  UNAVAILABLE with the reason) and ModelStatistics (per arm, from
  ``gateway.metrics.PredictionStats``).
- **Logging and shadows**: each row of an answer is one ``predictions`` row shaped exactly like a
  native ``Predict``'s, and is mirrored to the experiment's shadows; a model failure logs one
  failure row per row (status INTERNAL). Errors map through ``gateway.servicer.status_of``, the
  same statuses as the native API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

import abgate
from abgate.errors import AbgateError, InvalidArgument, NotFound, Unavailable, shown
from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.surface import UNDECODABLE_MESSAGE, note_undecodable
from gateway import codec, oip_codec
from gateway.auth import CLIENT_IDENTITY
from gateway.dataplane import ArmRuntime, BatchResult, DataPlane, ExperimentRuntime, synced
from gateway.idempotency import ANSWER, EXPERIMENT, IDENTITY, KEY, Failed, OipAnswer
from gateway.servicer import REUSED_MESSAGE, status_of

if TYPE_CHECKING:
    from gateway.metrics import PredictionStats

OIP_SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "abgate"
_STREAM_METHOD = f"{OIP_SERVICE_NAME}/ModelStreamInfer"
READY, UNAVAILABLE = "READY", "UNAVAILABLE"


def experiment_of(dp: DataPlane, name: str) -> ExperimentRuntime:
    """The experiment serving model ``name``; errors name the OIP field ``model_name``."""
    try:
        return dp.experiment(name)
    except NotFound:
        raise NotFound(f"unknown model {shown(name)}", field="model_name") from None
    except Unavailable as exc:
        if exc.field != "experiment":
            raise  # draining, or no config yet
        raise Unavailable(
            f"model {shown(name)} is not served by this gateway: it rejected its config",
            field="model_name",
        ) from None
    except InvalidArgument:
        raise InvalidArgument("must not be empty", field="model_name") from None


def _fail(context: grpc.aio.ServicerContext, exc: BaseException, empty: Any) -> Any:
    code, message = status_of(exc)  # the one error -> status mapping, shared with the native API
    context.set_code(code)
    context.set_details(message)
    return empty


class OipServicer:
    """Decode, call the data plane, encode; the same steps as ``GatewayServicer``."""

    def __init__(
        self,
        dataplane: DataPlane,
        executor: Executor,
        *,
        max_batch_rows: int,
        offload_rows: int,
        durable: bool = False,
        stats: PredictionStats | None = None,
    ) -> None:
        self._dp = dataplane
        self._stats = stats  # the log rows' counts (gateway.metrics), for ModelStatistics
        self._durable = durable  # --log-durability local: answer once the row is on disk
        self._executor = executor
        self._max_rows = max_batch_rows
        self._offload_rows = offload_rows
        # (experiment, arm index) -> (the experiment it was built for, response_prefix); emptied
        # when the snapshot changes so old models are not kept alive.
        self._prefixes: dict[tuple[str, int], tuple[ExperimentRuntime, bytes]] = {}
        self._prefix_snapshot: object = None

    def _prefix(self, exp: ExperimentRuntime, arm: ArmRuntime | None) -> bytes:
        snap = self._dp.snapshot
        if snap is not self._prefix_snapshot:
            self._prefixes = {}
            self._prefix_snapshot = snap
        key = (exp.name, arm.index if arm is not None else -1)
        hit = self._prefixes.get(key)
        if hit is not None and hit[0] is exp:
            return hit[1]
        prefix = oip_codec.response_prefix(exp, arm)
        self._prefixes[key] = (exp, prefix)
        return prefix

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        dp = self._dp
        return oip.ServerReadyResponse(ready=dp.snapshot is not None and not dp.draining)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        dp = self._dp
        snap = dp.snapshot
        ready = (
            snap is not None
            and not dp.draining
            and not request.version
            and request.name in snap.experiments
        )
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name=SERVER_NAME, version=abgate.__version__, extensions=[]
        )

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        try:
            exp = experiment_of(self._dp, request.name)
            oip_codec.check_version(request.version)
            return oip_codec.model_metadata(exp)
        except Exception as exc:
            return _fail(context, exc, oip.ModelMetadataResponse())

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> bytes | oip.ModelInferResponse:
        try:
            answer = await self._infer(request, context)
            if self._durable:
                await synced(self._dp)
            return answer
        except Exception as exc:
            return _fail(context, exc, oip.ModelInferResponse())

    async def _infer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> bytes | oip.ModelInferResponse:
        started = time.time()
        dp = self._dp
        exp = experiment_of(dp, request.model_name)
        call = oip_codec.decode_infer(request, exp, self._max_rows, context.invocation_metadata)
        n = len(call.matrix)
        request_id = call.request_id or dp.next_request_id()
        rids = oip_codec.row_request_ids(request_id, n)
        # A call of many rows is remembered under its own id as well as its rows' ids: no other
        # call may answer with that id either.
        key: Any = request_id if n == 1 else (request_id, *rids)
        users = call.user_ids
        signature = (call.raw, call.outputs, call.user_id, None if users is None else tuple(users))
        identity = CLIENT_IDENTITY.get()
        recent = dp.recent
        if call.request_id:
            seen = self._seen(key, signature, identity, exp.name, started)
            if seen is not None:
                return seen
        arm: ArmRuntime | None
        bucket: int | None
        if call.user_ids is None:
            bucket, arm = dp.route(exp, call.user_id)
            buckets = np.full(n, bucket, dtype=np.intp)
        else:
            bucket, arm = None, None
            buckets = dp.route_batch(exp, call.user_ids)
        # Taken before the call may wait on a thread: a repeat meanwhile is refused.
        box = OipAnswer(signature)
        entry = (key, started, identity, exp.name, call.user_id, box)
        recent.put(entry, 1 if n == 1 else n + 1)
        try:
            matrix = call.matrix
            try:
                if n >= self._offload_rows:
                    # Big calls would stall every other call on the event loop (see servicer).
                    result = await dp.offload(
                        self._executor, self._run, exp, arm, buckets, matrix, rids
                    )
                else:  # inline: no coroutine or thread hop for a small call
                    result = self._run(exp, arm, buckets, matrix, rids)
            except Exception as exc:
                self._model_failed(exp, buckets, rids, box, started, exc)
                raise
            return self._answer(exp, call, arm, bucket, rids, request_id, box, started, result)
        except BaseException:
            if box.answer is None:
                recent.discard(entry)  # nothing logged: the id is free for a retry
            raise

    def _model_failed(
        self,
        exp: ExperimentRuntime,
        buckets: np.ndarray,
        rids: list[str],
        box: OipAnswer,
        started: float,
        exc: Exception,
    ) -> None:
        """A model failure is logged (one failure row per row) and kept as this request's
        answer: a retry gets the same failure."""
        dp = self._dp
        code = exc.code if isinstance(exc, AbgateError) else grpc.StatusCode.INTERNAL
        arms = exp.arms
        for rid, b, ai in zip(rids, buckets.tolist(), exp.table_np[buckets].tolist(), strict=True):
            dp.log_failure(exp, arms[ai], b, rid, code.value[0], started)
        box.answer = Failed(code, status_of(exc)[1])

    def _answer(
        self,
        exp: ExperimentRuntime,
        call: oip_codec.InferCall,
        arm: ArmRuntime | None,
        bucket: int | None,
        rids: list[str],
        request_id: str,
        box: OipAnswer,
        started: float,
        result: BatchResult,
    ) -> bytes:
        """Log the rows, mirror them to the shadows and encode the answer (kept in ``box``)."""
        dp = self._dp
        matrix = call.matrix
        if len(matrix) == 1 and arm is not None and bucket is not None:
            # Exactly the log row of a native Predict.
            dp.log_prediction(
                exp, arm, bucket, rids[0], int(result.labels[0]), result.scores[0], started, matrix
            )
        else:
            dp.log_batch(result, started, matrix, exp.feature_threshold)
        if exp.shadows and dp.mirror is not None:
            dp.mirror.submit(exp, matrix, rids, result.buckets.tolist())
        if arm is None and len(set(result.arm_index.tolist())) == 1:
            arm = exp.arms[int(result.arm_index[0])]
        prefix = self._prefix(exp, arm)
        answer = oip_codec.encode_answer(prefix, result, request_id, call.outputs, bucket, call.raw)
        box.answer = answer
        return answer

    def _seen(
        self,
        key: Any,
        signature: Any,
        identity: str,
        experiment: str,
        now: float,
    ) -> bytes | oip.ModelInferResponse | None:
        """The original answer when this call repeats an earlier one's id (its retry), None
        when the id is new; ALREADY_EXISTS when it cannot be that call's retry."""
        recent = self._dp.recent
        ids = (key,) if type(key) is str else key
        if not recent.any_of(ids):
            return None
        hits = [e for e in map(recent.get, ids, (now,) * len(ids)) if e is not None]
        if not hits:
            return None  # only expired entries
        entry = hits[0]
        box = entry[ANSWER]
        if (
            not isinstance(box, OipAnswer)  # a native call's id
            or entry[KEY] != key
            or len(hits) != len(ids)
            or entry[IDENTITY] != identity
            or entry[EXPERIMENT] != experiment
            or box.signature != signature
        ):
            raise recent.conflict(REUSED_MESSAGE, field="id")
        answer = box.answer
        if answer is None:
            raise recent.conflict("a call with this id is still running", field="id")
        recent.repeats += 1
        if isinstance(answer, Failed):
            raise Failed(answer.code, answer.message)
        return answer

    def _run(
        self,
        exp: ExperimentRuntime,
        arm: ArmRuntime | None,
        buckets: np.ndarray,
        matrix: np.ndarray,
        rids: list[str],
    ) -> BatchResult:
        if arm is None:
            return self._dp.predict_batch(exp, buckets, matrix, rids)
        # One user: one arm, one onnxruntime call, no per-arm grouping.
        labels, scores = arm.variant.run(matrix)
        n = len(matrix)
        return BatchResult(
            exp.name,
            exp.config_version,
            exp.hash_version,
            exp.arms,
            np.full(n, arm.index, dtype=np.intp),
            buckets,
            labels,
            scores,
            rids,
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """ModelInfer per message, answered in order; a bad message fails only itself (its
        ``error_message`` is ``CODE: message``, the stream stays open), one that does not parse
        too, so messages arrive as bytes and are decoded here (as the native PredictStream)."""
        decode = oip.ModelInferRequest.FromString
        async for raw in request_iterator:
            try:
                request = decode(raw)
            except Exception:
                note_undecodable(_STREAM_METHOD)
                yield oip_codec.stream_error(f"INVALID_ARGUMENT: {UNDECODABLE_MESSAGE}", "", "")
                continue
            try:
                answer = await self._infer(request, context)
                if self._durable:
                    await synced(self._dp)
                yield oip_codec.stream_answer(answer)
            except Exception as exc:
                code, message = status_of(exc)
                yield oip_codec.stream_error(
                    f"{code.name}: {message}", request.id, request.model_name
                )

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        try:
            exp = experiment_of(self._dp, request.name)
            oip_codec.check_version(request.version)
            return oip.ModelConfigResponse(config=oip_codec.model_config(exp, self._max_rows))
        except Exception as exc:
            return _fail(context, exc, oip.ModelConfigResponse())

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        """Every experiment of the evaluator's snapshot: READY when this gateway serves it,
        UNAVAILABLE (with the reason) when it rejected its config or is draining; ``ready``
        keeps the READY ones only. One repository, named ""."""
        if request.repository_name:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(
                f"repository_name: unknown repository {shown(request.repository_name)} (a "
                "gateway has one, the evaluator's experiments: leave it empty)"
            )
            return oip.RepositoryIndexResponse()
        dp = self._dp
        snap = dp.snapshot
        index = oip.RepositoryIndexResponse.ModelIndex
        models = []
        if snap is not None:
            state, reason = (UNAVAILABLE, "the gateway is draining") if dp.draining else (READY, "")
            models = [index(name=n, state=state, reason=reason) for n in snap.experiments]
            models += [
                index(name=n, state=UNAVAILABLE, reason="this gateway rejected its config")
                for n in snap.rejected
            ]
        models.sort(key=lambda m: m.name)
        if request.ready:
            models = [m for m in models if m.state == READY]
        return oip.RepositoryIndexResponse(models=models)

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        """Per served arm (``version`` = the arm's name) of a model, or of every model when
        ``name`` is empty, from this gateway's own counts of its logged rows since it started
        (as ``abgate_predictions``): ``inference_count`` and ``success`` the answered rows,
        ``fail`` the rows a model failed, with their time from arrival to answer;
        ``execution_count`` counts rows too (each row is one model input; rows of one batch call
        are not told apart in the log); ``last_inference`` the newest row, ms since the epoch.
        With prediction logging off, nothing is counted."""
        try:
            snap = self._dp.snapshot
            if request.name:
                exps = [experiment_of(self._dp, request.name)]
            else:
                exps = (
                    [] if snap is None else [snap.experiments[n] for n in sorted(snap.experiments)]
                )
            out = []
            for exp in exps:
                arms = [a.name for a in exp.arms]
                if request.version:
                    if request.version not in arms:
                        raise NotFound(
                            f"model {shown(exp.name)} has no arm {shown(request.version)} (a "
                            f"statistics version is an arm: {', '.join(arms)})",
                            field="version",
                        )
                    arms = [request.version]
                out += [self._arm_statistics(exp.name, arm) for arm in arms]
            return oip.ModelStatisticsResponse(model_stats=out)
        except Exception as exc:
            return _fail(context, exc, oip.ModelStatisticsResponse())

    def _arm_statistics(self, experiment: str, arm: str) -> oip.ModelStatistics:
        ok = fail = 0
        ok_s = fail_s = 0.0
        last = 0.0
        stats = self._stats
        if stats is not None:
            for (exp, name, status, shadow), count in stats.counts.items():
                if exp != experiment or name != arm or shadow:
                    continue
                seconds = stats.latency.get((exp, name, status, shadow), [0.0])[-1]
                if status == "OK":
                    ok, ok_s = ok + count, ok_s + seconds
                else:
                    fail, fail_s = fail + count, fail_s + seconds
            last = stats.last.get((experiment, arm, False), 0.0)
        duration = oip.StatisticDuration
        return oip.ModelStatistics(
            name=experiment,
            version=arm,
            last_inference=int(last * 1000),
            inference_count=ok,
            execution_count=ok,
            inference_stats=oip.InferStatistics(
                success=duration(count=ok, ns=int(ok_s * 1e9)),
                fail=duration(count=fail, ns=int(fail_s * 1e9)),
            ),
        )

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The generated registration, except that ModelInfer may answer pre-serialized bytes."""

        def unary(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request.FromString, response_serializer=response
            )

        return {
            "ServerLive": unary(
                self.ServerLive, oip.ServerLiveRequest, oip.ServerLiveResponse.SerializeToString
            ),
            "ServerReady": unary(
                self.ServerReady, oip.ServerReadyRequest, oip.ServerReadyResponse.SerializeToString
            ),
            "ModelReady": unary(
                self.ModelReady, oip.ModelReadyRequest, oip.ModelReadyResponse.SerializeToString
            ),
            "ServerMetadata": unary(
                self.ServerMetadata,
                oip.ServerMetadataRequest,
                oip.ServerMetadataResponse.SerializeToString,
            ),
            "ModelMetadata": unary(
                self.ModelMetadata,
                oip.ModelMetadataRequest,
                oip.ModelMetadataResponse.SerializeToString,
            ),
            "ModelInfer": unary(self.ModelInfer, oip.ModelInferRequest, oip_codec.serialize_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.ModelStreamInfer,
                request_deserializer=None,  # decoded per message by ModelStreamInfer itself
                response_serializer=codec.passthrough,  # answers are encoded bytes
            ),
            "ModelConfig": unary(
                self.ModelConfig, oip.ModelConfigRequest, oip.ModelConfigResponse.SerializeToString
            ),
            "RepositoryIndex": unary(
                self.RepositoryIndex,
                oip.RepositoryIndexRequest,
                oip.RepositoryIndexResponse.SerializeToString,
            ),
            "ModelStatistics": unary(
                self.ModelStatistics,
                oip.ModelStatisticsRequest,
                oip.ModelStatisticsResponse.SerializeToString,
            ),
        }


def method_handlers(
    dataplane: DataPlane,
    executor: Executor,
    *,
    max_batch_rows: int,
    offload_rows: int,
    durable: bool = False,
    stats: PredictionStats | None = None,
) -> tuple[dict[str, grpc.RpcMethodHandler], OipServicer]:
    """The handlers of ``inference.GRPCInferenceService`` (OIP_SERVICE_NAME), by method, and
    the servicer behind them (the REST side, ``gateway.oip_http``, calls the same one)."""
    servicer = OipServicer(
        dataplane, executor, max_batch_rows=max_batch_rows, offload_rows=offload_rows,
        durable=durable, stats=stats,
    )  # fmt: skip
    return servicer.method_handlers(), servicer
