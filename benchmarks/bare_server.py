"""The transport ceiling: a bare grpc.aio server for the same service that answers every Predict
with one constant, pre-built response of a real gateway answer's size.

Run: python -m benchmarks.bare_server --listen 127.0.0.1:PORT [--response-hex HEX]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc


def typical_response() -> pb.PredictResponse:
    """Field for field as large as the gateway's answer for the demo experiment."""
    return pb.PredictResponse(
        request_id="0123456789abcdef-1a2b3c",
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
    def __init__(self, response: pb.PredictResponse) -> None:
        self.response = response

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return self.response


async def serve(listen: str, response: pb.PredictResponse) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.max_send_message_length", 4 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_InferenceGatewayServicer_to_server(BareServicer(response), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--response-hex", default="", help="serialized PredictResponse to return")
    args = parser.parse_args()
    response = (
        pb.PredictResponse.FromString(bytes.fromhex(args.response_hex))
        if args.response_hex
        else typical_response()
    )
    asyncio.run(serve(args.listen, response))


if __name__ == "__main__":
    main()
