"""The gRPC surface of one server process: the services it serves, one health status per service
name, server reflection (``grpc.reflection.v1`` and ``v1alpha``) over the same list of names,
the concurrency limit, and per-method call metrics named as py-grpc-prometheus names them.

Every RPC is routed by ``Surface.service`` (one dict lookup, as gRPC's own generic handler) to a
handler wrapped once at start-up: per call that is one more coroutine, two clock reads and a few
integer increments, with label sets resolved once (``benchmarks/bench_call_metrics.py``):

- at arrival (``service``): ``grpc_server_started_total``, the token check of ``authorize``
  and the ``max_concurrent_rpcs`` limit, answered by pre-built handlers that refuse with
  UNAUTHENTICATED or RESOURCE_EXHAUSTED and are counted like any other answer;
- around the handler: the request is deserialized here, after the token check. A message
  that does not parse is INVALID_ARGUMENT ``undecodable request`` (gRPC's own deserializer
  would answer UNKNOWN with the exception's class and log a traceback per call), logged at
  most once per ``UNDECODABLE_LOG_INTERVAL`` with the count since (``note_undecodable``); in
  a request stream it ends the stream, unless the service decodes its stream itself (the
  gateway's PredictStream answers such a message with a per-message error and goes on; the
  evaluator's StreamConfig sends its snapshot again).
  Then the status the handler left in its context, its
  exception (an abort's code, CANCELLED, DEADLINE_EXCEEDED, UNKNOWN) or OK is counted in
  ``grpc_server_handled_total`` and the handling time in ``grpc_server_handling_seconds``;
  stream messages in ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``.

Counts are plain ints in per-method slots written by the event-loop thread and turned into
metric families only when /metrics is scraped (``CallMetrics``). What gRPC answers itself before
any handler runs is counted as started but never as handled: a message over the receive limit
(RESOURCE_EXHAUSTED) and a call cancelled before its request arrived. A call to a method not
served (UNIMPLEMENTED) is not counted at all: its name is the caller's, not a label of ours.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from bisect import bisect_left
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from time import perf_counter
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME  # grpc.health.v1.Health
REFLECTION_V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"

# Handling-time histogram bounds, seconds: sub-millisecond for predictions, seconds for admin
# calls; a stream's time is its whole life (usually +Inf for the config stream).
HANDLING_BOUNDS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BOUND_LABELS = (*map(str, HANDLING_BOUNDS_S), "+Inf")

_CODES = sorted(grpc.StatusCode, key=lambda c: c.value[0])
_N_CODES = len(_CODES)  # status values are 0..16
_OK = grpc.StatusCode.OK.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
DEADLINE_SLACK = 0.1  # seconds before its deadline a cancelled call counts as DEADLINE_EXCEEDED
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
# What ``context.code()`` returns -> status value; None: the handler never set one (OK).
_CODE_VALUE: dict[grpc.StatusCode | None, int] = {None: _OK, **{c: c.value[0] for c in _CODES}}

OVERLOADED_MESSAGE = "more calls in flight than --max-concurrent-rpcs; retry later"
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token"
PERMISSION_DENIED_MESSAGE = (
    "this bearer token may not call this method (a read-only token only reads)"
)
# The details of a request that does not parse: nothing of the parser's error (internals).
UNDECODABLE_MESSAGE = "undecodable request"
UNDECODABLE_LOG_INTERVAL = 10.0  # seconds between log lines about undecodable requests

Authorize = Callable[[Sequence[tuple[str, str | bytes]]], bool]
# (method path "/pkg.Service/Method", metadata) -> may these credentials call it.
Permit = Callable[[str, Sequence[tuple[str, str | bytes]]], bool]


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """The ``grpc_type`` label as py-grpc-prometheus writes it."""
    if request_streaming:
        return "BIDI_STREAMING" if response_streaming else "CLIENT_STREAMING"
    return "SERVER_STREAMING" if response_streaming else "UNARY"


class MethodStats:
    """The counts of one method. Written only by the event-loop thread; read at scrape time
    (a scrape may see one call's count a moment before its histogram bucket)."""

    __slots__ = (
        "bins",
        "grpc_type",
        "handled",
        "method",
        "received",
        "request_streaming",
        "response_streaming",
        "seconds",
        "sent",
        "service",
        "started",
    )

    def __init__(
        self, service: str, method: str, request_streaming: bool, response_streaming: bool
    ) -> None:
        self.service = service
        self.method = method
        self.grpc_type = grpc_type(request_streaming, response_streaming)
        self.request_streaming = request_streaming
        self.response_streaming = response_streaming
        self.started = 0
        self.handled = [0] * _N_CODES  # by status value
        self.bins = [0] * (len(HANDLING_BOUNDS_S) + 1)  # handling time, last one +Inf
        self.seconds = 0.0
        self.received = 0
        self.sent = 0

    def done(self, code: int, started: float) -> None:
        elapsed = perf_counter() - started
        self.handled[code] += 1
        self.bins[bisect_left(HANDLING_BOUNDS_S, elapsed)] += 1  # le: bound inclusive
        self.seconds += elapsed

    def handled_by_code(self) -> dict[str, int]:
        return {c.name: self.handled[c.value[0]] for c in _CODES}


# -- instrumented handlers ------------------------------------------------------------------------
class _UndecodableLog:
    """One warning per ``UNDECODABLE_LOG_INTERVAL`` at most, with the count it stands for: a
    client sending garbage costs a counter increment per call, not a log line (or a
    traceback) per call."""

    __slots__ = ("_next", "count")

    def __init__(self) -> None:
        self._next = 0.0
        self.count = 0  # since the last line

    def note(self, method: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning(
            "%d undecodable request(s) answered INVALID_ARGUMENT since the last such line "
            "(the latest on %s); this line repeats at most every %.0f s",
            self.count,
            method,
            UNDECODABLE_LOG_INTERVAL,
        )
        self.count = 0
        self._next = now + UNDECODABLE_LOG_INTERVAL


_undecodable_log = _UndecodableLog()


def note_undecodable(method: str) -> None:
    """Count one request that did not parse (``method``: its full name) into the
    rate-limited log line; for services that decode a stream's messages themselves."""
    _undecodable_log.note(method)


class _Undecodable(Exception):
    """A streamed request that does not parse; the stream ends with INVALID_ARGUMENT."""


def _failure_code(exc: BaseException, context: grpc.aio.ServicerContext) -> int:
    """The status gRPC sends for a handler that raised ``exc``."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # The client's RST_STREAM at its deadline can reach us before our own timer (set from
        # grpc-timeout when the call arrived, so a little later) fires: a call cancelled that
        # close to its deadline ran out of time.
        remaining = context.time_remaining()
        return (
            _DEADLINE_EXCEEDED
            if remaining is not None and remaining <= DEADLINE_SLACK
            else _CANCELLED
        )
    code = _CODE_VALUE.get(context.code(), _UNKNOWN)  # an abort's code, or one set before raising
    return _UNKNOWN if code == _OK else code


def _refuse_undecodable(context: grpc.aio.ServicerContext, stats: MethodStats) -> None:
    _undecodable_log.note(f"{stats.service}/{stats.method}")
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(UNDECODABLE_MESSAGE)


async def _decoded(
    raw_messages: AsyncIterator[bytes],
    deserialize: Callable[[bytes], Any] | None,
    stats: MethodStats,
) -> AsyncIterator[Any]:
    async for raw in raw_messages:
        stats.received += 1
        if deserialize is None:
            yield raw
            continue
        try:
            message = deserialize(raw)
        except Exception:
            raise _Undecodable from None
        yield message


class _CountingContext:
    """The servicer context of a handler that writes its answers itself (``context.write``,
    as grpc_health's Watch does), counting them."""

    __slots__ = ("_context", "_stats")

    def __init__(self, context: grpc.aio.ServicerContext, stats: MethodStats) -> None:
        self._context = context
        self._stats = stats

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._stats.sent += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def instrument(handler: grpc.RpcMethodHandler, stats: MethodStats) -> grpc.RpcMethodHandler:
    """``handler`` counted into ``stats``; its requests are deserialized by the wrapper."""
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    behavior: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary
    ) or handler.stream_stream
    generator = inspect.isasyncgenfunction(behavior)
    if not (generator or inspect.iscoroutinefunction(behavior)):
        raise TypeError(f"{stats.service}/{stats.method}: only async handlers are served")
    if handler.response_streaming and generator:
        return _streaming_generator(handler, behavior, deserialize, serialize, stats)
    if generator:
        raise TypeError(f"{stats.service}/{stats.method}: a unary answer cannot be a generator")
    if not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(
            _unary_unary(behavior, deserialize, stats), response_serializer=serialize
        )
    request_streaming = handler.request_streaming
    response_streaming = handler.response_streaming

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = perf_counter()
        if request_streaming:
            request = _decoded(request, deserialize, stats)
        elif deserialize is not None:
            try:
                request = deserialize(request)
            except Exception:
                _refuse_undecodable(context, stats)
                stats.done(_INVALID_ARGUMENT, started)
                return None
        try:
            response = await behavior(
                request, _CountingContext(context, stats) if response_streaming else context
            )
        except _Undecodable:
            _refuse_undecodable(context, stats)
            stats.done(_INVALID_ARGUMENT, started)
            return None
        except BaseException as exc:
            stats.done(_failure_code(exc, context), started)
            raise
        stats.done(_CODE_VALUE.get(context.code(), _UNKNOWN), started)
        return response

    make = _HANDLER_FACTORIES[(request_streaming, response_streaming)]
    return make(call, request_deserializer=None, response_serializer=serialize)


def _identity(raw: bytes) -> bytes:
    return raw


def _unary_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    deserialize: Callable[[bytes], Any] | None,
    stats: MethodStats,
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The hot path (Predict, ModelInfer): ``MethodStats.done`` inlined, no objects of ours."""
    decode = deserialize if deserialize is not None else _identity
    handled, bins, code_value, bounds = stats.handled, stats.bins, _CODE_VALUE, HANDLING_BOUNDS_S

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = perf_counter()
        try:
            request = decode(raw)
        except Exception:
            _refuse_undecodable(context, stats)
            stats.done(_INVALID_ARGUMENT, started)
            return None
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            stats.done(_failure_code(exc, context), started)
            raise
        elapsed = perf_counter() - started
        handled[code_value.get(context.code(), _UNKNOWN)] += 1
        bins[bisect_left(bounds, elapsed)] += 1
        stats.seconds += elapsed
        return response

    return call


def _streaming_generator(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., AsyncGenerator[Any, None]],
    deserialize: Callable[[bytes], Any] | None,
    serialize: Callable[[Any], bytes] | None,
    stats: MethodStats,
) -> grpc.RpcMethodHandler:
    request_streaming = handler.request_streaming

    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = perf_counter()
        if request_streaming:
            request = _decoded(request, deserialize, stats)
        elif deserialize is not None:
            try:
                request = deserialize(request)
            except Exception:
                _refuse_undecodable(context, stats)
                stats.done(_INVALID_ARGUMENT, started)
                return
        answers = behavior(request, context)
        try:
            async for answer in answers:
                stats.sent += 1
                yield answer
        except _Undecodable:
            _refuse_undecodable(context, stats)
            stats.done(_INVALID_ARGUMENT, started)
            return
        except BaseException as exc:
            stats.done(_failure_code(exc, context), started)
            raise
        finally:
            await answers.aclose()  # a cancelled stream's handler cleans up now, not at GC
        stats.done(_CODE_VALUE.get(context.code(), _UNKNOWN), started)

    make = _HANDLER_FACTORIES[(request_streaming, True)]
    return make(call, request_deserializer=None, response_serializer=serialize)


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def refusal(
    handler: grpc.RpcMethodHandler, stats: MethodStats, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``code`` without reading the
    request, counted into ``stats``."""
    value = code.value[0]
    streaming = handler.response_streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        started = perf_counter()
        context.set_code(code)
        context.set_details(message)
        stats.done(value, started)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await unary(request, context)
        return
        yield  # pragma: no cover - makes this an async generator that answers nothing

    make = _HANDLER_FACTORIES[(handler.request_streaming, streaming)]
    return make(stream if streaming else unary, request_deserializer=None)


# -- reflection v1 ----------------------------------------------------------------------------
def ensure_reflection_v1_descriptor(pool: Any = None) -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the descriptor pool, so reflection can
    describe the v1 service it serves. grpcio-reflection ships only v1alpha (grpc/grpc#38576);
    v1 is the same file under another package (messages and field numbers identical)."""
    pool = pool if pool is not None else descriptor_pool.Default()
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name = REFLECTION_V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")

    def rename(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                if field.type_name.startswith(old):
                    field.type_name = new + field.type_name[len(old) :]
            rename(message.nested_type)

    rename(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.AddSerializedFile(proto.SerializeToString())


class _Health(health.aio.HealthServicer):  # type: ignore[name-defined]
    """grpc_health's servicer with ``List`` (grpcio-health-checking serves it only as
    UNIMPLEMENTED): every name with its status, the server's "" included."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )


class _Capture:
    """Stands in for a server so a generated ``add_*Servicer_to_server`` hands over its
    method handlers instead of registering them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = dict(handlers)


class _Route:
    __slots__ = ("denied", "forbidden", "handler", "limited", "overloaded", "public", "stats")

    def __init__(
        self, handler: grpc.RpcMethodHandler, stats: MethodStats, limited: bool, public: bool
    ) -> None:
        self.handler = instrument(handler, stats)
        self.stats = stats
        self.limited = limited
        self.public = public
        self.overloaded = refusal(
            handler, stats, grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_MESSAGE
        )
        self.denied = refusal(
            handler, stats, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE
        )
        self.forbidden = refusal(
            handler, stats, grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE
        )


# -- the surface --------------------------------------------------------------------------------
class Surface(grpc.GenericRpcHandler):
    """Everything one ``grpc.aio.Server`` serves. Add the services, then ``install`` (which adds
    health and reflection for the same list of names), then start the server.

    ``max_concurrent_rpcs``: calls of ``limited`` services in flight (from arrival until their
    status is sent) beyond which new ones are answered RESOURCE_EXHAUSTED; 0 = no limit. Health
    and reflection are never limited: probes answer under overload. ``authorize``: called with
    each call's metadata unless its service is ``public``; False answers UNAUTHENTICATED.
    ``permit``: then called with the method and the metadata of an authenticated call; False
    answers PERMISSION_DENIED (a read-only token calling a write).
    """

    def __init__(
        self,
        *,
        max_concurrent_rpcs: int = 0,
        authorize: Authorize | None = None,
        permit: Permit | None = None,
    ) -> None:
        if max_concurrent_rpcs < 0:
            raise ValueError("max_concurrent_rpcs must be 0 (no limit) or positive")
        self.health = _Health()
        self.limit = max_concurrent_rpcs
        self.in_flight = 0  # calls of limited services, counted only when there is a limit
        self._authorize = authorize
        self._permit = permit
        self._checks = authorize is not None or permit is not None or max_concurrent_rpcs > 0
        self._routes: dict[str, _Route] = {}
        self._services: list[str] = []
        self.stats: list[MethodStats] = []
        self._installed = False

    @property
    def names(self) -> tuple[str, ...]:
        """Every service name served, health and reflection included (after ``install``)."""
        return tuple(self._services)

    def add(
        self,
        service: str,
        handlers: Mapping[str, grpc.RpcMethodHandler],
        *,
        limited: bool = False,
        public: bool = False,
    ) -> None:
        """Serve ``service`` with its ``{method: handler}`` (async handlers only)."""
        if self._installed:
            raise RuntimeError("add services before install()")
        if service in self._services:
            raise ValueError(f"service {service} added twice")
        self._services.append(service)
        for method, handler in handlers.items():
            stats = MethodStats(
                service, method, handler.request_streaming, handler.response_streaming
            )
            self.stats.append(stats)
            self._routes[f"/{service}/{method}"] = _Route(handler, stats, limited, public)

    def add_servicer(
        self,
        add_to_server: Callable[[Any, Any], None],
        servicer: Any,
        *,
        limited: bool = False,
        public: bool = False,
    ) -> None:
        """Serve what a generated ``add_XServicer_to_server(servicer, server)`` registers."""
        capture = _Capture()
        add_to_server(servicer, capture)
        if not capture.services:
            raise ValueError(f"{add_to_server.__name__} registered no method handlers")
        for service, handlers in capture.services.items():
            self.add(service, handlers, limited=limited, public=public)

    def install(self, server: grpc.aio.Server) -> None:
        """Add health and reflection, then route every call of ``server`` through here."""
        if self._installed:
            raise RuntimeError("install() once")
        self.add_servicer(health_pb2_grpc.add_HealthServicer_to_server, self.health, public=True)
        ensure_reflection_v1_descriptor()
        names = [*self._services, REFLECTION_V1ALPHA, REFLECTION_V1]
        servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
        capture = _Capture()
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, capture)
        (handlers,) = capture.services.values()
        # v1 and v1alpha messages are wire-identical: one servicer answers both.
        self.add(REFLECTION_V1ALPHA, handlers)
        self.add(REFLECTION_V1, handlers)
        self._installed = True
        server.add_generic_rpc_handlers((self,))

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Called by grpc.aio for every call, in the call's own task, before gRPC reads the
        request (so also before its message-size check)."""
        route = self._routes.get(handler_call_details.method)
        if route is None:
            return None  # gRPC answers UNIMPLEMENTED
        route.stats.started += 1
        if not self._checks:
            return route.handler
        if not route.public:
            metadata = handler_call_details.invocation_metadata or ()
            if self._authorize is not None and not self._authorize(metadata):
                return route.denied
            if self._permit is not None and not self._permit(handler_call_details.method, metadata):
                return route.forbidden
        if self.limit and route.limited:
            if self.in_flight >= self.limit:
                return route.overloaded
            task = asyncio.current_task()
            if task is not None:  # always, under grpc.aio: its done callback ends the call
                self.in_flight += 1
                task.add_done_callback(self._release)
        return route.handler

    def _release(self, _task: object) -> None:
        self.in_flight -= 1

    def admit(self) -> bool:
        """A slot of the limit for a call that comes in by another door than gRPC (the
        gateway's REST), on the server's event loop; False: over the limit. Every True is
        paired with one ``leave``."""
        if not self.limit:
            return True
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """The end of a call ``admit`` let in."""
        if self.limit:
            self.in_flight -= 1

    async def set_serving(self, serving: bool) -> None:
        """One status for every name served, and for the whole server ("")."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._services):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Every name NOT_SERVING from now on, for good."""
        await self.health.enter_graceful_shutdown()

    @property
    def metrics(self) -> CallMetrics:
        return CallMetrics(self.stats)


class CallMetrics(Collector):
    """The call counts of a surface, with the names and labels of py-grpc-prometheus: every
    method with every status code from the start (zero until seen), so a rate of a code never
    misses its first call."""

    def __init__(self, stats: Sequence[MethodStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        started = CounterMetricFamily(
            "grpc_server_started",
            "RPCs started on the server (counted on arrival, before the request is read)",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by the status code sent",
            labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from a call's handler start to its status (streams: the whole stream)",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received",
            "Stream messages received by the server",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent",
            "Stream messages sent by the server",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        for s in self.stats:
            labels = [s.grpc_type, s.service, s.method]
            started.add_metric(labels, s.started)
            for code in _CODES:
                handled.add_metric([*labels, code.name], s.handled[code.value[0]])
            cumulative, buckets = 0, []
            for bound, n in zip(_BOUND_LABELS, list(s.bins), strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric(labels, buckets, s.seconds)
            if s.request_streaming:
                received.add_metric(labels, s.received)
            if s.response_streaming:
                sent.add_metric(labels, s.sent)
        yield started
        yield handled
        yield seconds
        yield received
        yield sent
