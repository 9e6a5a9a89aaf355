"""End-to-end throughput: `abgate serve` against a bare grpc.aio server, same load, same run.

h2load (Debian's nghttp2-client) sends one pre-encoded gRPC Predict body over HTTP/2; both
servers get the same request bytes and return answers of the same size (the bare server returns
the gateway's own answer to that request). Rounds alternate the servers so drift on a noisy
machine hits both; medians across rounds are reported.

Run: python -m benchmarks.e2e_compare --out benchmarks/results [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc

PATH = "/abgate.v1.InferenceGateway/Predict"
TARGET_RATIO = 0.85


def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed gRPC message: 1 byte 'compressed' flag (0), 4 bytes big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class H2loadResult:
    req_per_s: float
    succeeded: int
    failed: int
    errored: int
    latency_min_us: float
    latency_mean_us: float
    latency_max_us: float
    latency_sd_us: float


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _us(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        raise ValueError(f"not an h2load duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_h2load(output: str) -> H2loadResult:
    """Pull req/s, request counts and request-time statistics out of h2load's report."""
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        output,
    )
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if not (rate and counts and timing):
        raise ValueError("unrecognised h2load output:\n" + output[-2000:])
    lo, hi, mean, sd = (_us(v) for v in timing.groups())
    return H2loadResult(
        req_per_s=float(rate.group(1)),
        succeeded=int(counts.group(1)),
        failed=int(counts.group(2)),
        errored=int(counts.group(3)),
        latency_min_us=lo,
        latency_mean_us=mean,
        latency_max_us=hi,
        latency_sd_us=sd,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    target: str, request: pb.PredictRequest, timeout: float = 60.0
) -> pb.PredictResponse:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceGatewayStub(channel)
        while True:
            try:
                return stub.Predict(request, timeout=2)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def run_h2load(
    port: int, body: Path, duration: int, warmup: int, clients: int, streams: int
) -> H2loadResult:
    cmd = [
        "h2load", "-t", "1", "-c", str(clients), "-m", str(streams),
        "-D", str(duration), f"--warm-up-time={warmup}",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{PATH}",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_h2load(out)


class Server:
    def __init__(self, name: str, cmd: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection")
    parser.add_argument(
        "--ort-matrix",
        action="store_true",
        help="also run the gateway with 2 intra-op threads and with spinning on",
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("abgate: error: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2

    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    work = Path(tempfile.mkdtemp(prefix="abgate-bench-"))
    store = work / "models"
    metas = train_demo_models(ModelStore(store))
    config = write_demo_config(work / "experiments.toml", metas)
    X, _ = load_demo_holdout(store)
    row = np.ascontiguousarray(X[0], dtype="<f4")
    request = pb.PredictRequest(
        experiment="demo", user_id="bench-user-1",
        features=pb.Tensor(shape=[row.size], raw=row.tobytes(), datatype="FP32"),
    )  # fmt: skip
    body = work / "predict.grpc"
    body.write_bytes(grpc_frame(request.SerializeToString()))

    py = sys.executable
    # Both gateways share one embedded PostgreSQL in the work dir (separate databases would need
    # a server per variant; the log tables are append-only so sharing is harmless).
    variants: dict[str, list[str]] = {
        "gateway": ["--pg-data", str(work / "pg")],
        "gateway-nolog": ["--no-log-predictions"],
    }
    if args.ort_matrix:
        variants["gateway-ort2"] = ["--ort-intra-op-threads", "2", "--no-log-predictions"]
        variants["gateway-spin"] = ["--ort-spinning", "--no-log-predictions"]
    servers: dict[str, Server] = {}
    try:
        for name, extra in variants.items():
            port = free_port()
            servers[name] = Server(name, [
                py, "-m", "abgate", "--log-level", "WARNING", "serve",
                "--listen", f"127.0.0.1:{port}", "--config", str(config),
                "--model-store", str(store), "--state-dir", str(work / f"state-{name}"),
                "--watch-interval", "0", *extra,
            ], port)  # fmt: skip
            answer = wait_ready(f"127.0.0.1:{port}", request)
        port = free_port()
        servers["bare"] = Server(
            "bare",
            [py, "-m", "benchmarks.bare_server", "--listen", f"127.0.0.1:{port}",
             "--response-hex", answer.SerializeToString().hex()],
            port,
        )  # fmt: skip
        bare_answer = wait_ready(f"127.0.0.1:{port}", request)
        assert bare_answer.ByteSize() == answer.ByteSize(), "bare answer must match in size"

        results: dict[str, list[H2loadResult]] = {name: [] for name in servers}
        order = ["bare", *variants]
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else list(reversed(order)):
                res = run_h2load(
                    servers[name].port, body, args.duration, args.warmup,
                    args.connections, args.streams,
                )  # fmt: skip
                if res.failed or res.errored:
                    print(f"WARNING: {name} had {res.failed} failed/{res.errored} errored requests")
                results[name].append(res)
                print(
                    f"round {r + 1} {name:<14} {res.req_per_s:>9.0f} req/s  "
                    f"mean {res.latency_mean_us / 1000:.2f} ms"
                )
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        name: {
            "req_per_s_median": statistics.median(x.req_per_s for x in rs),
            "latency_mean_ms_median": statistics.median(x.latency_mean_us for x in rs) / 1000,
            "rounds": [asdict(x) for x in rs],
        }
        for name, rs in results.items()
    }
    bare = summary["bare"]["req_per_s_median"]
    ratios = {name: summary[name]["req_per_s_median"] / bare for name in variants}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "load": {
            "tool": "h2load", "connections": args.connections, "streams": args.streams,
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "request_bytes": request.ByteSize(), "response_bytes": answer.ByteSize(),
        },
        "results": summary,
        "ratio_vs_bare": ratios,
        "logging_on_off_ratio": ratios["gateway"] / ratios["gateway-nolog"],
        "target_ratio": TARGET_RATIO,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# End-to-end: gateway vs bare grpc.aio ({report['date']})",
        "",
        f"h2load, {args.connections} connections × {args.streams} streams, {args.duration} s "
        f"measured after {args.warmup} s warm-up, {args.rounds} alternating rounds, medians; "
        f"request {request.ByteSize()} B, response {answer.ByteSize()} B; "
        f"{report['machine']['nproc']} cores ({report['machine']['cpu']}).",
        "",
        "| server | req/s (median) | mean latency ms | ratio vs bare |",
        "|---|---|---|---|",
    ]
    for name in order:
        s = summary[name]
        ratio = "1.00" if name == "bare" else f"{ratios[name]:.2f}"
        rate, mean = s["req_per_s_median"], s["latency_mean_ms_median"]
        lines.append(f"| {name} | {rate:.0f} | {mean:.2f} | {ratio} |")
    (args.out / "e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ratio = ratios["gateway"]
    print(f"gateway/bare req/s ratio: {ratio:.2f} (target >= {TARGET_RATIO})")
    log_ratio = ratios["gateway"] / ratios["gateway-nolog"]
    print(f"logging on/off req/s ratio: {log_ratio:.2f} (target >= 0.95)")
    if ratio < TARGET_RATIO:
        print("WARNING: below target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
