#!/usr/bin/env python3
"""Container health check: exit 0 when HOST:PORT answers the standard gRPC health check with
SERVING, 1 otherwise (not listening, NOT_SERVING, or no answer within the timeout).

    abgate-health 127.0.0.1:50051 [SERVICE] [--timeout 2]

Copied into the image as /usr/local/bin/abgate-health (see deploy/Dockerfile); uses only the
grpcio and grpcio-health-checking packages that abgate already depends on.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, service: str = "", timeout: float = 2.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("service", nargs="?", default="", help="service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    return 0 if probe(args.target, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
