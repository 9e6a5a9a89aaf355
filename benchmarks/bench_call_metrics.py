"""What per-method call metrics cost a unary call, measured on grpc.aio's own dispatch path.

Each call does what grpc.aio does for an arriving RPC after the C core: a task per call,
``cygrpc._find_method_handler`` (generic handlers, then the interceptors), the request's
deserialization and the handler coroutine; the handler itself returns a constant. Variants:

- ``none``: ``grpc.method_handlers_generic_handler`` as the gateway used before;
- ``surface``: ``abgate.surface.Surface`` (counts at arrival and around the handler);
- ``surface+limit``: the same with ``max_concurrent_rpcs`` (a done callback per call);
- ``interceptor``: a ``grpc.aio.ServerInterceptor`` that wraps each call's handler, counting
  into prometheus_client Counter/Histogram children resolved once per method;
- ``interceptor+labels``: the same resolving ``.labels(...)`` on every call, as
  py-grpc-prometheus does.

Run: python -m benchmarks.bench_call_metrics [--calls 100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc._cython import cygrpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from abgate.surface import HANDLING_BOUNDS_S, Surface
from abgate.v1 import gateway_pb2 as pb

SERVICE = "abgate.v1.InferenceGateway"
METHOD = f"/{SERVICE}/Predict"
REQUEST = pb.PredictRequest(
    experiment="demo", user_id="user-1", features=pb.Tensor(raw=b"\0" * 120, datatype="FP32")
).SerializeToString()


class Context:
    """The part of grpc.aio's servicer context the handlers and the wrappers use."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None


async def predict(request: pb.PredictRequest, context: Any) -> bytes:
    return b"answer"


def handlers() -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=pb.PredictRequest.FromString
        )
    }


class Interceptor(grpc.aio.ServerInterceptor):
    """py-grpc-prometheus's aio interceptor, reduced to what it counts for a unary call."""

    def __init__(self, per_call_labels: bool) -> None:
        registry = CollectorRegistry()
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "", labels, registry=registry)
        self.handled = Counter("grpc_server_handled", "", [*labels, "grpc_code"], registry=registry)
        self.seconds = Histogram(
            "grpc_server_handling_seconds", "", labels, registry=registry,
            buckets=HANDLING_BOUNDS_S,
        )  # fmt: skip
        self.per_call_labels = per_call_labels
        self.children: dict[str, tuple[Any, Any, Any]] = {}

    def _children(self, method: str) -> tuple[Any, Any, Any]:
        service, name = method.split("/")[1:3]
        key = ("UNARY", service, name)
        return (
            self.started.labels(*key),
            self.handled.labels(*key, "OK"),
            self.seconds.labels(*key),
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if self.per_call_labels:
            started, ok, seconds = self._children(details.method)
        else:
            found = self.children.get(details.method)
            if found is None:
                found = self.children[details.method] = self._children(details.method)
            started, ok, seconds = found
        behavior = handler.unary_unary

        async def counted(request: Any, context: Any) -> Any:
            t0 = time.perf_counter()
            started.inc()
            response = await behavior(request, context)
            ok.inc()
            seconds.observe(time.perf_counter() - t0)
            return response

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def dispatcher(variant: str) -> tuple[Any, tuple[Any, ...], Surface | None]:
    """(method resolver, interceptors, surface) as grpc.aio's server would hold them."""
    if variant == "none":
        generic = grpc.method_handlers_generic_handler(SERVICE, handlers())
        return cygrpc._MethodResolver([generic], {}), (), None
    if variant.startswith("surface"):
        surface = Surface(max_concurrent_rpcs=1_000_000 if variant == "surface+limit" else 0)
        surface.add(SERVICE, handlers(), limited=True)
        return cygrpc._MethodResolver([surface], {}), (), surface
    if variant.startswith("interceptor"):
        generic = grpc.method_handlers_generic_handler(SERVICE, handlers())
        interceptor = Interceptor(per_call_labels=variant == "interceptor+labels")
        return cygrpc._MethodResolver([generic], {}), (interceptor,), None
    raise ValueError(variant)


async def one_call(resolver: Any, interceptors: tuple[Any, ...]) -> Any:
    handler = await cygrpc._find_method_handler(METHOD, (), resolver, interceptors)
    deserialize = handler.request_deserializer
    request = deserialize(REQUEST) if deserialize is not None else REQUEST
    return await handler.unary_unary(request, Context())


async def run(variant: str, calls: int) -> float:
    """Seconds per call, each call in its own task (as grpc.aio runs them)."""
    resolver, interceptors, _ = dispatcher(variant)
    loop = asyncio.get_running_loop()
    for _ in range(1000):  # warm up
        await loop.create_task(one_call(resolver, interceptors))
    t0 = time.perf_counter()
    for _ in range(calls):
        await loop.create_task(one_call(resolver, interceptors))
    return (time.perf_counter() - t0) / calls


VARIANTS = ("none", "surface", "surface+limit", "interceptor", "interceptor+labels")


def measure(calls: int, repeats: int, loop_factory: Any = None) -> dict[str, list[float]]:
    """µs per call of each variant, rounds interleaved so drift hits all of them."""
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        for _ in range(repeats):
            for variant in VARIANTS:
                out[variant].append(runner.run(run(variant, calls)) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    args = parser.parse_args(argv)
    factory = None
    if not args.asyncio:
        import uvloop

        factory = uvloop.new_event_loop
    results = measure(args.calls, args.repeats, factory)
    base = statistics.median(results["none"])
    print(f"{args.calls} calls x {args.repeats} rounds, {'asyncio' if args.asyncio else 'uvloop'}")
    print(f"{'variant':<20} {'median µs/call':>15} {'min':>8} {'max':>8} {'+µs vs none':>12}")
    for variant, values in results.items():
        med = statistics.median(values)
        print(
            f"{variant:<20} {med:>15.2f} {min(values):>8.2f} {max(values):>8.2f} "
            f"{med - base:>+12.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
