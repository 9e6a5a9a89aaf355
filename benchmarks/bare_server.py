"""The transport ceiling: a bare grpc.aio server for ``abgate.v1.InferenceGateway`` that answers
every Predict with one constant, pre-built PredictResponse the size of a real gateway answer.

Same server options as the gateway (grpc.aio, 4 MiB messages, no interceptors, no SO_REUSEPORT)
plus the standard health service, so the benchmark waits for both servers the same way.

Run: python -m benchmarks.bare_server --listen 127.0.0.1:PORT [--response-hex HEX]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 4 << 20  # the gateway's default --max-message-bytes


def typical_response() -> pb.PredictResponse:
    """Field for field as large as the gateway's answer for the "demo" experiment."""
    return pb.PredictResponse(
        request_id="0123456789abcdef-1a2b3c4",  # gateway ids: 16 hex, "-", a hex counter
        experiment="demo",
        arm="treatment",
        model=pb.ModelRef(id="demo-gbdt", version="1", sha256="ab" * 32),
        label=1,
        scores=[0.0123, 0.9877],
        config_version=1,
        bucket=1234,
        hash_version=1,
    )


class BareServicer(pb_grpc.InferenceGatewayServicer):
    """Predict does no work at all: the answer object exists before the first call."""

    def __init__(self, response: pb.PredictResponse) -> None:
        self.response = response

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return self.response


def build_server(
    listen: str, response: pb.PredictResponse
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:  # type: ignore[name-defined]
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_InferenceGatewayServicer_to_server(BareServicer(response), server)
    checker = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(listen)
    return server, port, checker


async def serve(listen: str, response: pb.PredictResponse) -> None:
    server, _, checker = build_server(listen, response)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await checker.enter_graceful_shutdown()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument(
        "--response-hex",
        default="",
        help="serialized PredictResponse to answer with (default: a typical demo answer)",
    )
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="asyncio's default loop (the plain grpc.aio baseline) or uvloop",
    )
    args = parser.parse_args(argv)
    try:
        response = (
            pb.PredictResponse.FromString(bytes.fromhex(args.response_hex))
            if args.response_hex
            else typical_response()
        )
    except (ValueError, DecodeError) as exc:  # bad hex, or bytes that are not a response
        parser.error(f"--response-hex: {exc}")
    loop_factory = None
    if args.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.listen, response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
