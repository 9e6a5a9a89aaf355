"""abgate.surface on a real grpc.aio server called by real gRPC clients: what is counted for
every way a call can end, the concurrency limit, the token check, health and reflection v1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from abgate.surface import (
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    MethodStats,
    Surface,
    ensure_reflection_v1_descriptor,
)
from abgate.v1 import gateway_pb2 as pb

SERVICE = "test.Echo"
HEALTH = "grpc.health.v1.Health"


class Echo:
    """Handlers whose outcome the request decides (``experiment``: what to do)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran = 0

    async def Unary(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        self.ran += 1
        what = request.experiment
        if what == "set_code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no such thing")
            return b""
        if what == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        if what == "raise":
            raise RuntimeError("boom")
        if what == "wait":
            await self.release.wait()
        if what == "sleep":
            await asyncio.sleep(30)
        return request.SerializeToString()

    async def Bidi(
        self, requests: AsyncIterator[pb.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            if request.experiment == "wait":
                await self.release.wait()
            yield request.SerializeToString()
            yield request.SerializeToString()  # two answers per message


def echo_handlers(echo: Echo) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Unary": grpc.unary_unary_rpc_method_handler(
            echo.Unary, request_deserializer=pb.PredictRequest.FromString
        ),
        "Bidi": grpc.stream_stream_rpc_method_handler(
            echo.Bidi, request_deserializer=pb.PredictRequest.FromString
        ),
    }


class Served:
    """A grpc.aio server with one Surface, on its own event-loop thread."""

    def __init__(self, **surface: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.surface = Surface(**surface)
        self.echo, self.server, self.port = self.call(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    async def _start(self) -> tuple[Echo, grpc.aio.Server, int]:
        echo = Echo()  # on the server's loop, as its Event must be
        self.surface.add(SERVICE, echo_handlers(echo), limited=True)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1024)])
        self.surface.install(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await self.surface.set_serving(True)
        return echo, server, port

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def unary(self, what: str, **kw: Any) -> grpc.StatusCode:
        fn = self.channel.unary_unary(f"/{SERVICE}/Unary")
        try:
            fn(pb.PredictRequest(experiment=what).SerializeToString(), **kw)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def stats(self, method: str, service: str = SERVICE) -> MethodStats:
        (found,) = [s for s in self.surface.stats if (s.service, s.method) == (service, method)]
        return found

    def handled(self, method: str, service: str = SERVICE) -> dict[str, int]:
        return {k: v for k, v in self.stats(method, service).handled_by_code().items() if v}

    def set_release(self) -> None:
        self.loop.call_soon_threadsafe(self.echo.release.set)

    def close(self) -> None:
        self.channel.close()
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(max_concurrent_rpcs=100)  # counted in flight, never refused
    try:
        yield s
    finally:
        s.close()


def test_every_status_a_handler_ends_with_is_counted(served: Served) -> None:
    outcomes = {
        "ok": grpc.StatusCode.OK,
        "set_code": grpc.StatusCode.NOT_FOUND,
        "abort": grpc.StatusCode.FAILED_PRECONDITION,
        "raise": grpc.StatusCode.UNKNOWN,
    }
    for what, code in outcomes.items():
        assert served.unary(what) == code, what
    assert served.unary("sleep", timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
    # A message that does not parse never reaches the handler and is the caller's fault.
    garbage = served.channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.RpcError) as info:
        garbage(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "undecodable request"
    stats = served.stats("Unary")
    assert stats.started == 6 and served.echo.ran == 5
    assert served.handled("Unary") == {
        "OK": 1,
        "NOT_FOUND": 1,
        "FAILED_PRECONDITION": 1,
        "UNKNOWN": 1,
        "DEADLINE_EXCEEDED": 1,
        "INVALID_ARGUMENT": 1,
    }
    assert sum(stats.bins) == 6 and stats.seconds >= 0.3
    wait_until(lambda: served.surface.in_flight == 0)  # when each call's task has ended


@pytest.fixture
def limited() -> Iterator[Served]:
    s = Served(max_concurrent_rpcs=1)
    try:
        yield s
    finally:
        s.close()


def test_the_limit_refuses_counted_and_releases_every_slot(limited: Served) -> None:
    served = limited
    holder = served.channel.unary_unary(f"/{SERVICE}/Unary").future(
        pb.PredictRequest(experiment="wait").SerializeToString(), timeout=10
    )
    wait_until(lambda: served.surface.in_flight == 1)  # the first call holds the one slot
    assert served.unary("ok") == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Probes are never limited.
    check = health_pb2_grpc.HealthStub(served.channel).Check
    assert check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status == 1
    served.set_release()
    holder.result(timeout=10)
    wait_until(lambda: served.surface.in_flight == 0)  # the slot is free once its task ends
    assert served.unary("ok") == grpc.StatusCode.OK
    assert served.handled("Unary") == {"OK": 2, "RESOURCE_EXHAUSTED": 1}
    # gRPC's own receive limit answers before any handler: started, never handled, and the
    # slot is given back (the surface releases it when the call's task ends).
    big = served.channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.RpcError) as info:
        big(pb.PredictRequest(experiment="x" * 2000).SerializeToString(), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.stats("Unary").started == 4
    assert sum(served.stats("Unary").handled) == 3
    wait_until(lambda: served.surface.in_flight == 0)


def test_stream_messages_and_a_cancelled_stream(served: Served) -> None:
    bidi = served.channel.stream_stream(f"/{SERVICE}/Bidi")
    messages = [pb.PredictRequest(experiment=f"m{i}").SerializeToString() for i in range(3)]
    assert len(list(bidi(iter(messages), timeout=5))) == 6
    stats = served.stats("Bidi")
    assert (stats.received, stats.sent, stats.grpc_type) == (3, 6, "BIDI_STREAMING")
    assert served.handled("Bidi") == {"OK": 1}
    # An undecodable message ends the stream with INVALID_ARGUMENT.
    with pytest.raises(grpc.RpcError) as info:
        list(bidi(iter([messages[0], b"\xff\xff"]), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A client that gives up mid-stream: CANCELLED, and the slot is free again.
    call = bidi(iter([pb.PredictRequest(experiment="wait").SerializeToString()]), timeout=10)
    wait_until(lambda: served.surface.in_flight == 1)
    call.cancel()
    wait_until(lambda: "CANCELLED" in served.handled("Bidi"))
    assert served.handled("Bidi") == {"OK": 1, "INVALID_ARGUMENT": 1, "CANCELLED": 1}
    wait_until(lambda: served.surface.in_flight == 0)


def test_health_watch_is_counted_as_a_server_stream(served: Served) -> None:
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    served.call(served.surface.set_serving(False))
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    # A message is counted once its write has returned on the server, which can be just after
    # the client has read it.
    stats = served.stats("Watch", HEALTH)
    wait_until(lambda: stats.sent == 2)
    watch.cancel()
    assert stats.grpc_type == "SERVER_STREAMING" and stats.sent == 2


def test_authorize_refuses_before_any_handler_and_health_stays_public() -> None:
    s = Served(authorize=lambda metadata: ("authorization", "Bearer ok") in metadata)
    try:
        assert s.unary("ok") == grpc.StatusCode.UNAUTHENTICATED
        assert s.unary("ok", metadata=(("authorization", "Bearer ok"),)) == grpc.StatusCode.OK
        check = health_pb2_grpc.HealthStub(s.channel).Check
        assert check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == 1
        assert s.echo.ran == 1
        assert s.handled("Unary") == {"UNAUTHENTICATED": 1, "OK": 1}
        assert s.handled("Check", HEALTH) == {"OK": 1}
    finally:
        s.close()


def test_health_and_reflection_serve_one_list_of_names(served: Served) -> None:
    names = set(served.surface.names)
    assert names == {SERVICE, HEALTH, REFLECTION_V1ALPHA, REFLECTION_V1}
    listed = health_pb2_grpc.HealthStub(served.channel).List(
        health_pb2.HealthListRequest(), timeout=5
    )
    assert set(listed.statuses) == names | {""}
    for version in (REFLECTION_V1, REFLECTION_V1ALPHA):
        info = served.channel.stream_stream(
            f"/{version}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (answer,) = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        assert {s.name for s in answer.list_services_response.service} == names, version


def test_reflection_v1_descriptor_is_v1alpha_renamed() -> None:
    from google.protobuf import descriptor_pool

    ensure_reflection_v1_descriptor()
    ensure_reflection_v1_descriptor()  # idempotent
    pool = descriptor_pool.Default()
    v1 = pool.FindServiceByName(REFLECTION_V1)
    alpha = pool.FindServiceByName(REFLECTION_V1ALPHA)
    assert v1.file.name == "grpc/reflection/v1/reflection.proto"
    method = v1.methods_by_name["ServerReflectionInfo"]
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    for name, message in alpha.file.message_types_by_name.items():
        other = v1.file.message_types_by_name[name]
        assert [(f.name, f.number, f.type) for f in message.fields] == [
            (f.name, f.number, f.type) for f in other.fields
        ]
