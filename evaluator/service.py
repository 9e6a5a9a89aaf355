"""The evaluator's gRPC side: the config stream every gateway keeps open, the admin API, and
the token check in front of both.

``Publisher`` holds the one current snapshot and what each gateway last said about it;
``ConfigStreamServicer`` moves snapshots out and ACK/NACKs in; ``AdminServicer`` turns operator
commands into new experiment versions through ``EvaluatorCore`` (``evaluator.server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
from google.protobuf.message import Message

from abgate.errors import AbgateError, InvalidArgument, NotFound, shown
from abgate.surface import UNDECODABLE_MESSAGE, note_undecodable
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from gateway.config import NAME

log = logging.getLogger(__name__)

# The first message must arrive this soon after a gateway opens the stream.
HELLO_TIMEOUT = 10.0
MAX_NODE_ID = 256  # characters of a gateway's node id
_STREAM_METHOD = "abgate.v1.ConfigStream/StreamConfig"
UNDECODABLE_ANSWER = "undecodable ACK/NACK (the current snapshot was sent again)"
MAX_NACK_MESSAGE = 4096  # characters of a NACK's error message kept


# -- credentials --------------------------------------------------------------------------------
Role = Literal["admin", "read"]
ADMIN: Role = "admin"
READ: Role = "read"
_ADMIN = "/abgate.v1.EvaluatorAdmin/"
# What a read-only token may call: the admin API's reads (health and reflection are open).
READ_METHODS = frozenset(
    _ADMIN + m for m in ("ListExperiments", "GetExperiment", "Gateways", "History")
)


class TokenAuth:
    """Every call but health needs ``authorization: Bearer <token>``: the check
    ``abgate.surface.Surface`` runs on each call's metadata when the call arrives, before gRPC
    reads (or anyone deserializes) the request; a call that fails it is answered
    UNAUTHENTICATED (and counted) without any handler running. Exactly one ``authorization``
    header: a call with two is refused, whichever of them holds the token (a proxy that adds
    one in front of the client's must not decide which one counts).

    Two tokens: the admin token (everything: the config stream, every admin call) and, when
    given, a read-only one (``READ_METHODS`` and, over HTTP, the reads; ``permits`` answers
    False for anything else, which is PERMISSION_DENIED / 403)."""

    def __init__(self, token: str, read_token: str = "") -> None:
        if not token:
            raise ValueError("a control-plane token is required")
        if read_token == token:
            raise ValueError("the read-only token must differ from the admin token")
        self._expected = f"Bearer {token}".encode()
        self._read = f"Bearer {read_token}".encode() if read_token else b""

    def role(self, metadata: Sequence[tuple[str, str | bytes]]) -> Role | None:
        """``ADMIN``, ``READ``, or None for a call without exactly one known token."""
        given: str | bytes | None = None
        for key, value in metadata:
            if key == "authorization":
                if given is not None:
                    return None
                given = value
        if given is None:
            return None
        raw = given.encode("utf-8", "replace") if isinstance(given, str) else given
        # Both compared every time: how long it takes tells nothing of which one matched.
        admin = hmac.compare_digest(raw, self._expected)
        read = hmac.compare_digest(raw, self._read) if self._read else False
        return ADMIN if admin else READ if read else None

    def __call__(self, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        return self.role(metadata) is not None

    def permits(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        """May the call's token call ``method`` ("/abgate.v1.EvaluatorAdmin/Promote")."""
        role = self.role(metadata)
        return role == ADMIN or (role == READ and method in READ_METHODS)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (what gateways and the CLI send)."""
    return (("authorization", f"Bearer {token}"),)


# -- publishing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GatewayRejection:
    """One experiment version a gateway refused (from its latest ACK)."""

    experiment: str
    version: int  # the experiment's own version it refused
    error: str  # "STATUS_NAME: message"
    serving_version: int  # the version of it the gateway serves instead (0: none)


@dataclass
class GatewayView:
    node_id: str
    version: int = 0
    connected: bool = False
    acked_at: float = 0.0
    last_error: str = ""
    streams: int = 0
    # The experiments its latest ACK refused, by name.
    rejections: dict[str, GatewayRejection] = field(default_factory=dict)


@dataclass(eq=False)  # identity: one per stream, kept in a set
class _Subscriber:
    node_id: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_nonce: str = ""
    sent_version: int = 0


class StatusSink(Protocol):
    """Where ACK/NACK/connect events go besides memory (PostgreSQL in the real server)."""

    def __call__(
        self, node_id: str, *, version: int, connected: bool, acked: bool, error: str
    ) -> None: ...


class RejectionSink(Protocol):
    """Told the experiments each ACK refuses, none included (the server pauses and audits
    them)."""

    def __call__(self, node_id: str, rejections: Mapping[str, GatewayRejection]) -> None: ...


class Publisher:
    """The current snapshot, the streams waiting for the next one, and each gateway's state."""

    def __init__(
        self, sink: StatusSink | None = None, rejections: RejectionSink | None = None
    ) -> None:
        self.current: cpb.ConfigSnapshot | None = None
        self.published_at = 0.0
        self.gateways: dict[str, GatewayView] = {}
        self._subs: set[_Subscriber] = set()
        self._acks = asyncio.Condition()
        self._nonces = itertools.count(1)
        self._sink = sink
        self._rejection_sink = rejections
        self.acks = 0
        self.nacks = 0
        self.undecodable = 0  # stream messages after the hello that did not parse

    @property
    def version(self) -> int:
        return self.current.version if self.current is not None else 0

    def publish(self, snapshot: cpb.ConfigSnapshot) -> None:
        self.current = snapshot
        self.published_at = time.monotonic()
        for sub in self._subs:
            sub.changed.set()
        log.info(
            "publishing config version %d (%d experiments) to %d streams",
            snapshot.version,
            len(snapshot.experiments),
            len(self._subs),
        )

    def next_for(self, sub: _Subscriber) -> cpb.ConfigSnapshot | None:
        """The snapshot to send ``sub`` now, with a fresh nonce (None: nothing new)."""
        sub.changed.clear()
        snap = self.current
        if snap is None or (sub.sent_nonce and sub.sent_version == snap.version):
            return None
        out = cpb.ConfigSnapshot()
        out.CopyFrom(snap)
        out.nonce = f"{snap.version}-{next(self._nonces)}"
        sub.sent_nonce, sub.sent_version = out.nonce, snap.version
        return out

    def subscribe(self, node_id: str, version: int) -> _Subscriber:
        sub = _Subscriber(node_id)
        sub.changed.set()  # state of the world: a new stream gets the current snapshot
        self._subs.add(sub)
        view = self.gateways.setdefault(node_id, GatewayView(node_id))
        view.connected, view.version = True, version
        view.streams += 1
        self._emit(node_id, version=version, connected=True, acked=False, error="")
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subs.discard(sub)
        view = self.gateways[sub.node_id]
        view.streams -= 1
        if view.streams <= 0:
            view.connected = False
            self._emit(sub.node_id, version=view.version, connected=False, acked=False, error="")

    def undecodable_answer(self, sub: _Subscriber) -> None:
        """A message of ``sub``'s stream that does not parse: whatever it acknowledged is
        unknown, so the gateway is shown the error and sent the current snapshot again (its
        answer to that one tells); the stream stays open."""
        self.undecodable += 1
        view = self.gateways[sub.node_id]
        view.last_error = f"INVALID_ARGUMENT: {UNDECODABLE_ANSWER}"
        self._emit(
            sub.node_id, version=view.version, connected=True, acked=False, error=view.last_error
        )
        sub.sent_nonce = ""  # next_for sends the current snapshot again
        sub.changed.set()

    async def answer(self, sub: _Subscriber, req: cpb.ConfigRequest) -> None:
        view = self.gateways[sub.node_id]
        view.version = req.version
        if req.HasField("error_detail"):
            self.nacks += 1
            detail = req.error_detail
            # Kept in PostgreSQL text (no NUL) and shown by `abgate experiments gateways`.
            message = detail.message[:MAX_NACK_MESSAGE].replace("\x00", "\ufffd")
            view.last_error = f"{grpc.StatusCode(_code(detail.code)).name}: {message}"
            log.warning(
                "gateway %s NACKed config (nonce %s), still serving version %d: %s",
                sub.node_id,
                req.response_nonce,
                req.version,
                view.last_error,
            )
            self._emit(
                sub.node_id, version=req.version, connected=True, acked=False, error=view.last_error
            )
        else:
            self.acks += 1
            view.acked_at = time.time()
            view.last_error = ""
            # A NACK changed nothing on the gateway, so only an ACK replaces what it refuses.
            view.rejections = {
                s.name: GatewayRejection(
                    s.name,
                    s.rejected_version,
                    f"{grpc.StatusCode(_code(s.error_detail.code)).name}: {s.error_detail.message}",
                    s.version,
                )
                for s in req.experiments
                if s.HasField("error_detail")
            }
            self._emit(sub.node_id, version=req.version, connected=True, acked=True, error="")
            if self._rejection_sink is not None:
                self._rejection_sink(sub.node_id, view.rejections)
        async with self._acks:
            self._acks.notify_all()

    def _emit(self, node_id: str, **kw: Any) -> None:
        if self._sink is not None:
            self._sink(node_id, **kw)

    def connected(self) -> list[GatewayView]:
        return [g for g in self.gateways.values() if g.connected]

    def rejections_of(self, experiment: str) -> list[tuple[str, GatewayRejection]]:
        """(node id, rejection) of every connected gateway whose latest ACK refuses it."""
        return sorted(
            ((g.node_id, g.rejections[experiment]) for g in self.connected()
             if experiment in g.rejections),
            key=lambda pair: pair[0],
        )  # fmt: skip

    async def wait_acked(self, version: int, *, count: int = 1, timeout: float = 10.0) -> bool:
        """True once at least ``count`` connected gateways run ``version`` or newer."""

        def done() -> bool:
            return sum(1 for g in self.connected() if g.version >= version) >= count

        async with self._acks:
            try:
                await asyncio.wait_for(self._acks.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


class ConfigStreamServicer(cpb_grpc.ConfigStreamServicer):
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The generated registration, except that StreamConfig decodes its messages itself:
        one that does not parse fails alone instead of ending the stream."""
        return {
            "StreamConfig": grpc.stream_stream_rpc_method_handler(
                self.StreamConfig,
                request_deserializer=None,
                response_serializer=cpb.ConfigSnapshot.SerializeToString,
            )
        }

    async def StreamConfig(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[cpb.ConfigSnapshot]:
        requests = request_iterator.__aiter__()
        decode = cpb.ConfigRequest.FromString
        try:
            raw = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "node_id: open the stream with a ConfigRequest"
            )
        try:
            hello = decode(raw)
        except Exception:
            # Without a hello there is no gateway to answer: the stream ends.
            note_undecodable(_STREAM_METHOD)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)
        if not hello.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id: must not be empty")
        if len(hello.node_id) > MAX_NODE_ID or "\x00" in hello.node_id:
            # It is a key of the gateways table (PostgreSQL text: no NUL).
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node_id: at most {MAX_NODE_ID} characters, no NUL",
            )
        pub = self.publisher
        sub = pub.subscribe(hello.node_id, hello.version)
        log.info("gateway %s connected, serving version %d", hello.node_id, hello.version)

        async def read_answers() -> None:
            async for raw in requests:
                try:
                    req = decode(raw)
                except Exception:
                    note_undecodable(_STREAM_METHOD)  # a log line at most every 10 s
                    pub.undecodable_answer(sub)
                    continue
                await pub.answer(sub, req)

        reader = asyncio.create_task(read_answers())
        try:
            while not reader.done():
                snap = pub.next_for(sub)
                if snap is not None:
                    yield snap
                    continue
                waiter = asyncio.create_task(sub.changed.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            pub.unsubscribe(sub)
            log.info("gateway %s disconnected", hello.node_id)


# -- admin ----------------------------------------------------------------------------------------
class AdminCore(Protocol):
    """What the admin API needs from the evaluator (implemented by ``evaluator.server``)."""

    async def create(self, definition: cpb.ExperimentDefinition) -> cpb.ExperimentView: ...
    async def views(self, include_archived: bool = False) -> list[cpb.ExperimentView]: ...
    async def view(self, name: str) -> cpb.ExperimentView: ...
    async def operate(
        self, action: str, req: cpb.ExperimentRequest, caller: dict[str, str] | None = None
    ) -> cpb.ExperimentView: ...
    def gateways(self) -> cpb.GatewaysResponse: ...
    async def request_retrain(
        self, req: cpb.RequestRetrainRequest, caller: dict[str, str] | None = None
    ) -> cpb.RequestRetrainResponse: ...
    async def start_round(
        self, req: cpb.StartRoundRequest, caller: dict[str, str] | None = None
    ) -> cpb.ExperimentView: ...
    async def history(self, req: cpb.HistoryRequest) -> cpb.HistoryResponse: ...


async def _call(context: grpc.aio.ServicerContext, coro: Awaitable[Any]) -> Any:
    """The admin API's one mapping point from domain errors to statuses."""
    try:
        return await coro
    except AbgateError as exc:
        await context.abort(exc.code, exc.message)
    except Exception:
        log.exception("admin call failed")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class AdminServicer(cpb_grpc.EvaluatorAdminServicer):
    def __init__(self, core: AdminCore) -> None:
        self.core = core

    async def CreateExperiment(
        self, request: cpb.CreateExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        async def run() -> cpb.ExperimentView:
            no_nul(request.definition, "definition")
            return await self.core.create(request.definition)

        return await _call(context, run())

    async def ListExperiments(
        self, request: cpb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListExperimentsResponse:
        views = await _call(context, self.core.views(request.include_archived))
        return cpb.ListExperimentsResponse(experiments=views)

    async def GetExperiment(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        async def run() -> cpb.ExperimentView:
            return await self.core.view(_name(request))

        return await _call(context, run())

    async def _operate(
        self, action: str, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        async def run() -> cpb.ExperimentView:
            _name(request)
            return await self.core.operate(action, request, caller(request, context))

        return await _call(context, run())

    async def Promote(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("promote", request, context)

    async def Rollback(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("rollback", request, context)

    async def Pause(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("pause", request, context)

    async def Resume(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("resume", request, context)

    async def Archive(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("archive", request, context)

    async def Unarchive(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("unarchive", request, context)

    async def UpdateExperiment(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("update", request, context)

    async def AdvanceCanary(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("advance", request, context)

    async def Gateways(
        self, request: cpb.GatewaysRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GatewaysResponse:
        return self.core.gateways()

    async def RequestRetrain(
        self, request: cpb.RequestRetrainRequest, context: grpc.aio.ServicerContext
    ) -> cpb.RequestRetrainResponse:
        async def run() -> cpb.RequestRetrainResponse:
            _experiment(request.experiment)
            no_nul(request)
            return await self.core.request_retrain(request, caller(request, context))

        return await _call(context, run())

    async def StartRound(
        self, request: cpb.StartRoundRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        async def run() -> cpb.ExperimentView:
            _experiment(request.experiment)
            no_nul(request)
            return await self.core.start_round(request, caller(request, context))

        return await _call(context, run())

    async def Approve(
        self, request: cpb.ExperimentRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ExperimentView:
        return await self._operate("approve", request, context)

    async def History(
        self, request: cpb.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> cpb.HistoryResponse:
        async def run() -> cpb.HistoryResponse:
            if not request.name:
                raise InvalidArgument("must name an experiment", field="name")
            if not NAME.fullmatch(request.name):
                raise NotFound(f"unknown experiment {shown(request.name)}", field="name")
            return await self.core.history(request)

        return await _call(context, run())


def caller(request: Any, context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Who asks, for the audit row: the name the client states (``actor``, not authenticated:
    every token holder may write any), its address, and its verified client certificate's
    subject when the listener requires mTLS."""
    if len(request.actor) > 256:
        raise InvalidArgument("must be at most 256 characters", field="actor")
    out = {"actor": request.actor, "peer": context.peer() or ""}
    subject = (context.auth_context() or {}).get("x509_common_name")
    if subject:
        out["identity"] = b",".join(subject).decode(errors="replace")
    return out


def _experiment(name: str) -> str:
    """An experiment name given in a request field ``experiment``."""
    if not name:
        raise InvalidArgument("must name an experiment", field="experiment")
    if not NAME.fullmatch(name):
        raise NotFound(f"unknown experiment {shown(name)}", field="experiment")
    return name


def _name(request: cpb.ExperimentRequest) -> str:
    if not request.name:
        raise InvalidArgument("must name an experiment", field="name")
    if not NAME.fullmatch(request.name):
        # Creation checks names, so none like this exists (and a NUL could not be queried).
        raise NotFound(f"unknown experiment {shown(request.name)}", field="name")
    no_nul(request)
    return request.name


def no_nul(message: Message, path: str = "") -> None:
    """InvalidArgument naming the first string field of ``message`` (at any depth) that holds
    a NUL: every string the admin API takes ends in PostgreSQL text or jsonb, which hold none
    (the insert would fail as INTERNAL)."""
    for f, value in message.ListFields():
        name = f"{path}.{f.name}" if path else f.name
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            items: list[tuple[Any, Any]] = [(k, v) for k, v in value.items()]
        elif f.is_repeated:
            items = list(enumerate(value))
        else:
            items = [(None, value)]
        for key, item in items:
            where = (
                name
                if key is None
                else f"{name}[{key!r}]"
                if isinstance(key, str)
                else f"{name}[{key}]"
            )
            if isinstance(key, str) and "\x00" in key:
                raise InvalidArgument("keys must not contain NUL characters", field=name)
            if isinstance(item, Message):
                no_nul(item, where)
            elif isinstance(item, str) and "\x00" in item:
                raise InvalidArgument("must not contain NUL characters", field=where)


def verdict_json(view: cpb.ExperimentView) -> dict[str, Any]:
    """The current verdict in its documented shape (``abgate experiments show E --json``)."""
    v = view.verdict
    return {
        "winner": v.winner or None,
        "p_value": v.p_value,
        "effect_size": v.effect_size,
        "ci": list(v.ci),
        "recommendation": v.recommendation or "continue",
    }


def message_json(message: Any) -> dict[str, Any]:
    """A control-plane message as plain JSON, every field present, with int64 fields as numbers
    (protobuf's JSON mapping writes them as strings, which no shell script expects)."""
    from google.protobuf import json_format

    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _int64_as_numbers(message.DESCRIPTOR, doc)


def _int64_as_numbers(descriptor: Any, doc: dict[str, Any]) -> dict[str, Any]:
    from google.protobuf.descriptor import FieldDescriptor as F

    for f in descriptor.fields:
        if f.name not in doc:
            continue
        value = doc[f.name]
        if f.type in (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64):
            doc[f.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif f.type == F.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
            items = value if isinstance(value, list) else [value]
            for item in items:
                _int64_as_numbers(f.message_type, item)
    return doc


def view_json(view: cpb.ExperimentView) -> dict[str, Any]:
    """An ExperimentView as plain JSON (what ``abgate experiments show --full --json`` prints)."""
    doc = message_json(view)
    doc["details"] = json.loads(view.details_json) if view.details_json else {}
    doc.pop("details_json", None)
    return doc
