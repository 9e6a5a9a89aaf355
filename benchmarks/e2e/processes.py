"""The processes under test: a server subprocess (up once its health service says
SERVING), the gateways (one per set of `abgate serve` flags) and the bare servers, and the
embedded PostgreSQL's postmaster."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.addresses import free_port

# The reference servers: a plain grpc.aio server on asyncio's default loop, and on uvloop.
BARE_SERVERS = {"bare": "asyncio", "bare-uvloop": "uvloop"}


class Server:
    """One server subprocess; stderr goes to a file shown when it fails."""

    def __init__(self, name: str, cmd: list[str], port: int, workdir: Path) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.target = f"127.0.0.1:{port}"
        self.stderr_path = workdir / f"{name}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_serving(self, timeout: float = 120.0) -> None:
        """Block until the standard health service says SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.stderr_tail()}"
                    )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not SERVING after {timeout:.0f} s")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gateway_variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """Server name → extra `abgate serve` flags. "gateway" is the defaults, logging on."""
    variants: dict[str, list[str]] = {"gateway": []}
    if args.nolog:
        variants["gateway-nolog"] = ["--no-log-predictions"]
    if args.asyncio:
        variants["gateway-asyncio"] = ["--event-loop", "asyncio"]
    if args.ort_matrix:
        # intra-op 1 × spinning off is "gateway"; the other three corners of the 2 × 2.
        variants["gateway-ort1-spin"] = ["--ort-spinning"]
        variants["gateway-ort2"] = ["--ort-intra-op-threads", "2"]
        variants["gateway-ort2-spin"] = ["--ort-intra-op-threads", "2", "--ort-spinning"]
    return variants


def start_gateway(
    name: str, extra: list[str], *, config: Path, store: Path, work: Path, db_url: str
) -> Server:
    """`abgate serve` with ``extra`` flags; it logs predictions to ``db_url`` unless ``extra``
    turns logging off."""
    port = free_port()
    log_flags = [] if "--no-log-predictions" in extra else ["--database-url", db_url]
    return Server(name, [
        sys.executable, "-m", "abgate", "--log-level", "WARNING", "serve",
        "--listen", f"127.0.0.1:{port}", "--config", str(config),
        "--model-store", str(store), "--state-dir", str(work / f"state-{name}"),
        *log_flags, *extra,
    ], port, work)  # fmt: skip


def start_bare_server(name: str, loop: str, response: bytes, work: Path) -> Server:
    """``benchmarks/bare_server.py`` on event loop ``loop``, answering every call with
    ``response`` (a serialized PredictResponse)."""
    port = free_port()
    return Server(name, [
        sys.executable, "-m", "benchmarks.bare_server", "--listen", f"127.0.0.1:{port}",
        "--response-hex", response.hex(), "--event-loop", loop,
    ], port, work)  # fmt: skip


def postmaster_pid(data_dir: Path) -> int:
    """The embedded PostgreSQL's postmaster (first line of postmaster.pid), 0 if not found."""
    for pidfile in (data_dir / "postmaster.pid", *data_dir.glob("*/postmaster.pid")):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return 0
