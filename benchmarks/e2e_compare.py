"""End-to-end throughput: `abgate serve` against a bare grpc.aio server, same load, same run.

h2load (Debian's nghttp2-client) posts one pre-encoded gRPC Predict body over HTTP/2 to each
server in turn. Both get the same request bytes and answer with messages of the same size: the
bare server returns the gateway's own answer to that request. h2load reports HTTP 200 even for
gRPC errors (grpc-status travels in trailers), so every server is first checked with the exact
same bytes through a real gRPC client, and after each run the received bytes per request are
compared with the answer's size (an error answer carries no message). Rounds alternate the
servers so drift on a shared machine hits all of them; medians across rounds are reported, with
each server's CPU time per request measured from /proc over the measured phase.

Run: python -m benchmarks.e2e_compare --out benchmarks/results [--duration 10] [--rounds 3]
     [--connections 4] [--streams 16] [--ort-matrix] [--nolog] [--asyncio] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.v1 import gateway_pb2 as pb

PATH = "/abgate.v1.InferenceGateway/Predict"
TARGET_RATIO = 0.85
# The reference servers: a plain grpc.aio server on asyncio's default loop, and on uvloop.
BARE_SERVERS = {"bare": "asyncio", "bare-uvloop": "uvloop"}
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)
EXIT_USAGE = 2
# Answers whose size differs from the bare server's by more than this are not the same answer.
# Only the gateway's request id varies in size: its hex call counter grows from 1 to 5 digits
# over a benchmark (see bare_response); a gRPC error instead carries no message at all.
SIZE_SLACK_BYTES = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Busy cores outside the servers, their database and h2load above which a run is flagged.
OTHER_CORES_LIMIT = 0.15
GATEWAY_ARMS = ("control", "treatment")


# -- request body -----------------------------------------------------------------------------
def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed gRPC message: 1 byte compressed flag (0), 4 bytes big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def grpc_unframe(body: bytes) -> bytes:
    """The message inside one uncompressed gRPC frame (the inverse of ``grpc_frame``)."""
    if len(body) < 5:
        raise ValueError("a gRPC frame has a 5-byte prefix")
    flag, length = struct.unpack(">BI", body[:5])
    if flag != 0 or length != len(body) - 5:
        raise ValueError(f"bad gRPC frame: flag {flag}, length {length}, {len(body) - 5} bytes")
    return body[5:]


def build_request(row: np.ndarray, user_id: str, experiment: str = "demo") -> pb.PredictRequest:
    """A Predict request for one float32 feature row, the way a client would encode it."""
    arr = np.ascontiguousarray(row, dtype="<f4").reshape(-1)
    return pb.PredictRequest(
        experiment=experiment,
        user_id=user_id,
        features=pb.Tensor(shape=[arr.size], raw=arr.tobytes(), datatype="FP32"),
    )


def h2load_command(
    h2load: str,
    port: int,
    body: Path,
    *,
    duration: int,
    warmup: int,
    connections: int,
    streams: int,
    log_file: Path | None = None,
) -> list[str]:
    cmd = [
        h2load, "-t", "1", "-c", str(connections), "-m", str(streams),
        "-D", str(duration), f"--warm-up-time={warmup}",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]  # fmt: skip
    if log_file is not None:
        cmd.append(f"--log-file={log_file}")
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    return cmd


# -- h2load output ----------------------------------------------------------------------------
@dataclass
class H2loadResult:
    req_per_s: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    data_bytes: int
    latency_min_us: float
    latency_max_us: float
    latency_mean_us: float
    latency_sd_us: float
    # share of requests within mean ± sd, as h2load prints it
    latency_within_sd_pct: float
    # from h2load's per-request log (h2load itself prints no percentiles)
    percentiles_us: dict[str, float] = field(default_factory=dict)

    @property
    def data_bytes_per_request(self) -> float:
        return self.data_bytes / self.done if self.done else 0.0


_UNITS = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0}


def duration_us(value: str) -> float:
    """An h2load duration such as ``250us``, ``13.94ms`` or ``1.02s`` in microseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        raise ValueError(f"not an h2load duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_h2load(output: str) -> H2loadResult:
    """Req/s, request counts, received data bytes and request-time statistics from h2load's
    report (h2load 1.4x-1.6x text format)."""
    rate = re.search(r"^finished in \S+, ([\d.]+) req/s", output, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored(?:, (\d+) timeout)?",
        output,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx", output, re.M)
    traffic = re.search(r"^traffic: .*?\((\d+)\) data", output, re.M)
    timing = re.search(
        r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d.]+)%", output, re.M
    )
    if not (rate and counts and codes and traffic and timing):
        raise ValueError("unrecognised h2load output:\n" + output[-2000:])
    lo, hi, mean, sd = (duration_us(v) for v in timing.groups()[:4])
    return H2loadResult(
        req_per_s=float(rate.group(1)),
        done=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)),
        errored=int(counts.group(6)),
        timeout=int(counts.group(7) or 0),
        status_2xx=int(codes.group(1)),
        data_bytes=int(traffic.group(1)),
        latency_min_us=lo,
        latency_max_us=hi,
        latency_mean_us=mean,
        latency_sd_us=sd,
        latency_within_sd_pct=float(timing.group(5)),
    )


def parse_h2load_log(text: str) -> list[int]:
    """Request times (µs) of 2xx answers from ``h2load --log-file`` lines
    (start µs since epoch, HTTP status, µs until the end of the response)."""
    times = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].startswith("2"):
            times.append(int(parts[2]))
    return times


def percentiles(values: Sequence[float], ps: Iterable[float] = PERCENTILES) -> dict[str, float]:
    """Nearest-rank percentiles, keyed ``p50``, ``p99.9``…; empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {}
    for p in ps:
        rank = max(1, math.ceil(p / 100.0 * n))
        out[f"p{p:g}"] = float(ordered[min(rank, n) - 1])
    return out


# -- CPU accounting from /proc ------------------------------------------------------------------
def _stat_fields(path: Path) -> list[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def thread_cpu_s(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of ``pid``'s threads grouped by role: ``main`` (the asyncio
    event loop), ``python-threads`` (other Python threads: grpc.aio's poller, executors) and the
    others by their OS thread name (gRPC's ``event_engine``, …)."""
    out: dict[str, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        task = Path(f"/proc/{pid}/task/{tid}")
        f = _stat_fields(task / "stat")
        if not f:
            continue
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            comm = "?"
        if int(tid) == pid:
            key = "main"
        elif comm.startswith("python"):
            key = "python-threads"
        else:
            key = comm
        user, system = out.get(key, (0.0, 0.0))
        out[key] = (user + int(f[11]) / CLK_TCK, system + int(f[12]) / CLK_TCK)
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them (by parent pid), scanned from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(Path(f"/proc/{entry}/stat"))
        if f:
            children.setdefault(int(f[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [r for r in roots if r > 0]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuSample:
    server_s: float
    threads_s: dict[str, tuple[float, float]]
    db_s: float
    h2load_s: float
    busy_s: float
    wall_s: float


def cpu_sample(server_pid: int, db_pids: Iterable[int]) -> CpuSample:
    return CpuSample(
        server_s=process_cpu_s(server_pid),
        threads_s=thread_cpu_s(server_pid),
        db_s=sum(process_cpu_s(p) for p in descendants(db_pids)),
        # h2load runs as our child: its CPU shows in RUSAGE_CHILDREN once it is reaped.
        h2load_s=children_cpu_s(),
        busy_s=system_busy_s(),
        wall_s=time.monotonic(),
    )


# -- servers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def call_raw(target: str, message: bytes, timeout: float = 10.0) -> bytes:
    """Send already serialized PredictRequest bytes through a real gRPC client; the answer's
    bytes. Raises grpc.RpcError on a non-OK status."""
    with grpc.insecure_channel(target) as channel:
        # No serializers: bytes in, bytes out.
        predict = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
        answer: bytes = predict(message, timeout=timeout)
        return answer


def check_answer(raw: bytes, *, arm: str | None = None) -> pb.PredictResponse:
    """A gateway-shaped answer for the "demo" experiment, or AssertionError saying why not."""
    r = pb.PredictResponse.FromString(raw)
    problems = []
    if r.experiment != "demo":
        problems.append(f"experiment {r.experiment!r}")
    if r.arm not in GATEWAY_ARMS or (arm is not None and r.arm != arm):
        problems.append(f"arm {r.arm!r}")
    if not r.request_id:
        problems.append("no request_id")
    if len(r.model.sha256) != 64 or not r.model.id or not r.model.version:
        problems.append(f"model {r.model.id!r}:{r.model.version!r} sha {r.model.sha256!r}")
    if len(r.scores) != 2:
        problems.append(f"{len(r.scores)} scores")
    if r.config_version < 1 or r.hash_version < 1:
        problems.append(f"config_version {r.config_version} hash_version {r.hash_version}")
    if problems:
        raise AssertionError("unexpected answer: " + ", ".join(problems))
    return r


def bare_response(answer: pb.PredictResponse) -> pb.PredictResponse:
    """The gateway's answer with the request id as long as the gateway sends under load.

    Gateway ids are 16 hex digits, "-", and a hex call counter: a fresh gateway answers with
    a 1-digit counter, but from call 65,536 on the counter has 5 digits (4 bytes more), which
    is what the gateway sends during most of the measured runs.
    """
    bare = pb.PredictResponse()
    bare.CopyFrom(answer)
    prefix, dash, _ = answer.request_id.rpartition("-")
    if dash:
        bare.request_id = f"{prefix}-{0x10000:x}"
    return bare


def pick_user(target: str, row: np.ndarray, arm: str = "treatment", tries: int = 500) -> str:
    """The first ``bench-user-N`` the gateway routes to ``arm`` (the heavier demo model)."""
    for i in range(tries):
        user = f"bench-user-{i}"
        answer = check_answer(call_raw(target, build_request(row, user).SerializeToString()))
        if answer.arm == arm:
            return user
    raise RuntimeError(f"no user among {tries} routed to arm {arm!r}")


def postmaster_pid(data_dir: Path) -> int:
    """The embedded PostgreSQL's postmaster (first line of postmaster.pid), 0 if not found."""
    for pidfile in (data_dir / "postmaster.pid", *data_dir.glob("*/postmaster.pid")):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return 0


# -- one measured run ---------------------------------------------------------------------------
@dataclass
class RunResult:
    h2load: H2loadResult
    server_cpu_us_per_req: float
    db_cpu_us_per_req: float
    h2load_cpu_us_per_req: float
    # busy cores of everything else on the machine during the run (other users' jobs, kernel
    # work not charged to a process): above ~0.15 the run is contaminated
    other_cores: float
    # server CPU µs per request by thread role (see thread_cpu_s): [user, system]
    server_threads_us_per_req: dict[str, tuple[float, float]]


def run_h2load(
    h2load: str,
    server: Server,
    body: Path,
    args: argparse.Namespace,
    duration: int,
    log_file: Path | None = None,
) -> str:
    cmd = h2load_command(
        h2load, server.port, body, duration=duration, warmup=0,
        connections=args.connections, streams=args.streams, log_file=log_file,
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def measure(
    h2load: str,
    server: Server,
    body: Path,
    args: argparse.Namespace,
    log_file: Path,
    db_pids: Sequence[int],
) -> RunResult:
    """A warm-up run, then the measured run with CPU accounting around it.

    The warm-up is a separate h2load run rather than ``--warm-up-time``: h2load counts the
    warm-up's bytes in its traffic totals but not its requests, and the bytes per request are
    how gRPC errors (HTTP 200, no message) are told apart from answers.
    """
    if args.warmup > 0:
        run_h2load(h2load, server, body, args, args.warmup)
    a = cpu_sample(server.pid, db_pids)
    out = run_h2load(h2load, server, body, args, args.duration, log_file)
    b = cpu_sample(server.pid, db_pids)
    res = parse_h2load(out)
    res.percentiles_us = percentiles(parse_h2load_log(log_file.read_text()))
    log_file.unlink(missing_ok=True)
    per_req = 1e6 / max(res.done, 1)
    server_s = b.server_s - a.server_s
    db_s = b.db_s - a.db_s
    h2load_s = b.h2load_s - a.h2load_s
    other = (b.busy_s - a.busy_s) - server_s - db_s - h2load_s
    threads = {}
    for key, (user, system) in b.threads_s.items():
        user0, system0 = a.threads_s.get(key, (0.0, 0.0))
        threads[key] = (round((user - user0) * per_req, 1), round((system - system0) * per_req, 1))
    return RunResult(
        h2load=res,
        server_cpu_us_per_req=server_s * per_req,
        db_cpu_us_per_req=db_s * per_req,
        h2load_cpu_us_per_req=h2load_s * per_req,
        other_cores=max(other, 0.0) / max(b.wall_s - a.wall_s, 1e-9),
        server_threads_us_per_req=dict(sorted(threads.items(), key=lambda kv: -sum(kv[1]))),
    )


def summarise(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Median of every metric across rounds (each metric on its own)."""

    def med(values: Iterable[float]) -> float:
        return float(statistics.median(values))

    hs = [r.h2load for r in runs]
    keys = sorted({k for h in hs for k in h.percentiles_us}, key=lambda k: float(k[1:]))
    return {
        "req_per_s": med(h.req_per_s for h in hs),
        "latency_us": {
            "min": med(h.latency_min_us for h in hs),
            "mean": med(h.latency_mean_us for h in hs),
            "max": med(h.latency_max_us for h in hs),
            "sd": med(h.latency_sd_us for h in hs),
            "within_sd_pct": med(h.latency_within_sd_pct for h in hs),
            **{k: med(h.percentiles_us.get(k, math.nan) for h in hs) for k in keys},
        },
        "server_cpu_us_per_req": med(r.server_cpu_us_per_req for r in runs),
        "db_cpu_us_per_req": med(r.db_cpu_us_per_req for r in runs),
        "h2load_cpu_us_per_req": med(r.h2load_cpu_us_per_req for r in runs),
        "other_cores": med(r.other_cores for r in runs),
        "data_bytes_per_request": med(h.data_bytes_per_request for h in hs),
        "server_threads_us_per_req": {
            key: [
                round(med(r.server_threads_us_per_req.get(key, (0.0, 0.0))[i] for r in runs), 1)
                for i in (0, 1)
            ]
            for key in runs[0].server_threads_us_per_req
        },
    }


# -- py-spy -----------------------------------------------------------------------------------
PROFILE_RATE = 200  # py-spy samples per second
PROJECT_PREFIXES = ("gateway/", "abgate/", "benchmarks/", "converters/")


def profile_summary(text: str, requests: float, n: int = 40) -> dict[str, Any]:
    """Summarise ``py-spy record --gil --threads --function --format raw`` output (one
    ``thread (TID): NAME;frame;…;frame COUNT`` line per distinct stack) as µs of GIL-held time
    per request: per thread, the top ``n`` frames by self time, and the project's own frames by
    total time. With one event loop doing all the Python work, GIL time per request is what
    bounds throughput."""
    us_per_sample = 1e6 / PROFILE_RATE / max(requests, 1.0)
    threads: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread ("):
            thread = frames.pop(0).partition(": ")[2] or "?"
        threads[thread] += count
        self_t[frames[-1] if frames else "<no Python frame>"] += count
        for frame in set(frames):
            total_t[frame] += count

    samples = sum(threads.values())

    def us(k: int) -> float:
        return round(k * us_per_sample, 1)

    def project(frame: str) -> bool:
        return frame.rpartition(" (")[2].startswith(PROJECT_PREFIXES)

    return {
        "samples": samples,
        "gil_us_per_req": us(samples),
        "threads_us_per_req": {t: us(k) for t, k in threads.most_common()},
        "top_self_us_per_req": [(f, us(k)) for f, k in self_t.most_common(n)],
        # Frames under nearly every sample are the entry point (main, serve), not work.
        "project_total_us_per_req": [
            (f, us(k)) for f, k in total_t.most_common() if project(f) and k < 0.9 * samples
        ][:n],
    }


def profile(
    py_spy: str,
    h2load: str,
    server: Server,
    body: Path,
    args: argparse.Namespace,
    out_dir: Path,
) -> dict[str, Any]:
    """One extra load run with py-spy sampling the thread that holds the GIL. Blocking mode
    (py-spy pauses the server for each sample) costs a few % of throughput here but, unlike
    ``--nonblocking``, gives consistent stacks on Python 3.11. The raw collapsed stacks are kept
    next to the report."""
    raw = out_dir / f"profile-{server.name}.txt"
    spy = subprocess.Popen(
        [
            py_spy, "record", "--pid", str(server.pid), "--duration", str(args.duration),
            "--rate", str(PROFILE_RATE), "--gil", "--threads", "--function",
            "--format", "raw", "--output", str(raw),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The load outlasts the sampling by about a second on both ends.
    out = run_h2load(h2load, server, body, args, args.duration + 2)
    _, err = spy.communicate(timeout=args.duration + 60)
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed ({spy.returncode}): {err.strip()[-500:]}"}
    rate = parse_h2load(out).req_per_s
    return {
        "raw": raw.name,
        "req_per_s_while_profiled": rate,
        **profile_summary(raw.read_text(), requests=rate * args.duration),
    }


# -- report -------------------------------------------------------------------------------------
def machine(h2load: str) -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    version = subprocess.run([h2load, "--version"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "h2load": version.strip().splitlines()[0] if version.strip() else "?",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def markdown(report: Mapping[str, Any]) -> str:
    load, m = report["load"], report["machine"]
    lines = [
        f"# End-to-end: gateway vs bare grpc.aio ({report['date']})",
        "",
        f"h2load, 1 thread, {load['connections']} connections × {load['streams']} streams, "
        f"{load['duration_s']} s measured after a {load['warmup_s']} s warm-up run, "
        f"{load['rounds']} alternating rounds, medians; request {load['request_bytes']} B, "
        f"response {load['response_bytes']} B (arm {load['arm']}, model {load['model']}); "
        f"{m['nproc']} cores ({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}, "
        f"onnxruntime {m['onnxruntime']}.",
        "",
        "| server | req/s | vs bare | mean ms | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU µs/req | db CPU µs/req | other busy cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    results = report["results"]
    for name, s in results.items():
        lat = s["latency_us"]

        def ms(key: str, lat: Mapping[str, float] = lat) -> str:
            v = lat.get(key, math.nan)
            return "–" if math.isnan(v) else f"{v / 1000:.2f}"

        lines.append(
            f"| {name} | {s['req_per_s']:.0f} | {report['ratio_vs_bare'][name]:.2f} "
            f"| {ms('mean')} | {ms('p50')} | {ms('p90')} | {ms('p99')} | {ms('max')} "
            f"| {s['server_cpu_us_per_req']:.0f} | {s['db_cpu_us_per_req']:.0f} "
            f"| {s['other_cores']:.2f} |"
        )
    lines += ["", f"**gateway/bare req/s ratio: {report['ratio']:.2f}** (target ≥ {TARGET_RATIO})"]
    if "ratio_same_loop" in report:
        lines += ["", f"gateway/bare-uvloop (both on uvloop): {report['ratio_same_loop']:.2f}"]
    lines += ["", "Servers: `bare` is `benchmarks/bare_server.py` on asyncio's default loop "
              "(a plain grpc.aio server), `bare-uvloop` the same on uvloop; `gateway` is "
              "`abgate serve` (one process, defaults: uvloop, prediction logging to "
              "PostgreSQL on)."]  # fmt: skip
    for name, variant in report.get("variants", {}).items():
        if variant:
            lines.append(f"- `{name}`: `abgate serve {' '.join(variant)}`")

    roles = list(
        dict.fromkeys(
            k
            for s in results.values()
            for k, (user, system) in s["server_threads_us_per_req"].items()
            if user + system >= 1.0
        )
    )
    lines += [
        "",
        "Server CPU µs per request by thread, user + system (`main` runs the asyncio loop and "
        "every handler; `python-threads` is grpc.aio's poller):",
        "",
        "| server | " + " | ".join(roles) + " |",
        "|---|" + "---:|" * len(roles),
    ]
    for name, s in results.items():
        cells = []
        for role in roles:
            user, system = s["server_threads_us_per_req"].get(role, (0.0, 0.0))
            cells.append(f"{user:.0f} + {system:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    if report.get("warnings"):
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in report["warnings"]]

    prof = report.get("profile", {})
    ok = {name: p for name, p in prof.items() if "error" not in p}
    for name, p in prof.items():
        if "error" in p:
            lines += ["", f"py-spy {name}: {p['error']}"]
    if ok:
        names = list(ok)
        lines += [
            "",
            "## Where the GIL time goes (py-spy)",
            "",
            f"`py-spy record --gil --function` at {PROFILE_RATE} Hz during one more run per "
            "server; µs of GIL-held time per request (Cython/C code shows as the Python frame "
            "that called it: `Handle._run` is grpc.aio's own per-call work). "
            + ", ".join(
                f"{n}: {p['gil_us_per_req']:.0f} µs/req at {p['req_per_s_while_profiled']:.0f} "
                "req/s"
                for n, p in ok.items()
            )
            + ".",
            "",
            "| frame (self time) | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        table = {n: dict(p["top_self_us_per_req"]) for n, p in ok.items()}
        frames = list(
            dict.fromkeys(f for p in ok.values() for f, _ in p["top_self_us_per_req"][:12])
        )
        frames.sort(key=lambda f: -max(t.get(f, 0.0) for t in table.values()))
        for f in frames:
            cells = [f"{table[n][f]:.1f}" if f in table[n] else "–" for n in names]
            lines.append(f"| `{f}` | " + " | ".join(cells) + " |")
        for n, p in ok.items():
            if p["project_total_us_per_req"]:
                lines += ["", f"{n}, project frames by total time (µs/req):", ""]
                lines += [f"- {us:.1f} `{f}`" for f, us in p["project_total_us_per_req"][:12]]
    return "\n".join(lines) + "\n"


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--connections", type=int, default=4, help="h2load connections (-c)")
    parser.add_argument("--streams", type=int, default=16, help="streams per connection (-m)")
    parser.add_argument("--h2load", default="h2load", help="h2load executable")
    parser.add_argument(
        "--nolog", action="store_true", help="also run a gateway with --no-log-predictions"
    )
    parser.add_argument(
        "--asyncio", action="store_true", help="also run a gateway with --event-loop asyncio"
    )
    parser.add_argument(
        "--ort-matrix",
        action="store_true",
        help="also run gateways with onnxruntime intra-op threads 1/2 × spinning on/off",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, one py-spy run per server (bare, gateway); needs py-spy",
    )
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.connections, args.streams) < 1 or args.warmup < 0:
        parser.error("--duration, --rounds, --connections, --streams must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    h2load = shutil.which(args.h2load)
    if h2load is None:
        print(
            f"e2e_compare: error: {args.h2load!r} not found. The comparison needs h2load "
            "(Debian/Ubuntu: apt-get install nghttp2-client); no other load tool is used.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    py_spy = None
    if args.profile:
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if py_spy is None:
            print(
                "e2e_compare: error: --profile needs py-spy (pip install py-spy)", file=sys.stderr
            )
            return EXIT_USAGE

    try:
        return compare(args, h2load, py_spy)
    except (RuntimeError, AssertionError, grpc.RpcError, OSError) as exc:
        print(f"e2e_compare: error: {exc}", file=sys.stderr)
        return 1


def compare(args: argparse.Namespace, h2load: str, py_spy: str | None) -> int:
    """Train, start, check, measure, report (see the module docstring)."""
    from abgate.db.embedded import EmbeddedPostgres
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    started = time.monotonic()
    machine_info = machine(h2load)  # before our servers add to the load average
    work = Path(tempfile.mkdtemp(prefix="abgate-e2e-"))
    servers: dict[str, Server] = {}
    pg: EmbeddedPostgres | None = None
    try:
        store = work / "models"
        metas = train_demo_models(ModelStore(store))
        config = write_demo_config(work / "experiments.toml", metas)
        X, _ = load_demo_holdout(store)
        row = np.ascontiguousarray(X[0], dtype="<f4")
        # One PostgreSQL for every gateway that logs, started here so its CPU can be counted
        # (only one server is under load at a time).
        pg = EmbeddedPostgres(work / "pg")
        db_url = pg.start()
        db_pids = [postmaster_pid(pg.data_dir)]

        variants = gateway_variants(args)
        py = sys.executable
        for name, extra in variants.items():
            port = free_port()
            log_flags = [] if "--no-log-predictions" in extra else ["--database-url", db_url]
            servers[name] = Server(name, [
                py, "-m", "abgate", "--log-level", "WARNING", "serve",
                "--listen", f"127.0.0.1:{port}", "--config", str(config),
                "--model-store", str(store), "--state-dir", str(work / f"state-{name}"),
                *log_flags, *extra,
            ], port, work)  # fmt: skip
        for s in servers.values():
            s.wait_serving()

        # The request: a real holdout row and a user the gateway routes to "treatment".
        user = pick_user(servers["gateway"].target, row)
        request = build_request(row, user)
        message = request.SerializeToString()
        body = work / "predict.grpc"
        body.write_bytes(grpc_frame(message))
        answers = {
            name: check_answer(call_raw(s.target, message), arm="treatment")
            for name, s in servers.items()
        }
        answer = answers["gateway"]
        for name, loop in BARE_SERVERS.items():
            port = free_port()
            servers[name] = Server(name, [
                py, "-m", "benchmarks.bare_server", "--listen", f"127.0.0.1:{port}",
                "--response-hex", bare_response(answer).SerializeToString().hex(),
                "--event-loop", loop,
            ], port, work)  # fmt: skip
            servers[name].wait_serving()
        bare_raw = call_raw(servers["bare"].target, message)
        check_answer(bare_raw, arm="treatment")
        check_answer(call_raw(servers["bare-uvloop"].target, message), arm="treatment")
        for name, a in answers.items():
            if abs(a.ByteSize() - len(bare_raw)) > SIZE_SLACK_BYTES:
                raise AssertionError(
                    f"{name} answers {a.ByteSize()} B, the bare server {len(bare_raw)} B"
                )
        print(
            f"request {len(message)} B (user {user}, arm {answer.arm}, model {answer.model.id}); "
            f"answers: bare {len(bare_raw)} B, "
            + ", ".join(f"{n} {a.ByteSize()} B" for n, a in answers.items())
        )

        order = [*BARE_SERVERS, *variants]
        frame_bytes = 5 + len(bare_raw)  # what h2load should receive per answer
        warnings: list[str] = []
        runs: dict[str, list[RunResult]] = {name: [] for name in order}
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                s = servers[name]
                run = measure(
                    h2load, s, body, args, work / f"{name}.log",
                    [] if name in BARE_SERVERS else db_pids,
                )  # fmt: skip
                h = run.h2load
                runs[name].append(run)
                print(
                    f"round {r + 1}/{args.rounds} {name:<18} {h.req_per_s:>8.0f} req/s  "
                    f"p50 {h.percentiles_us.get('p50', math.nan) / 1000:.2f} ms  "
                    f"p99 {h.percentiles_us.get('p99', math.nan) / 1000:.2f} ms  "
                    f"server {run.server_cpu_us_per_req:.0f} µs CPU/req  "
                    f"other load {run.other_cores:.2f} cores",
                    flush=True,
                )
                problems = []
                if h.succeeded != h.done or h.status_2xx != h.done:
                    problems.append(f"{h.done - h.succeeded} requests failed at the HTTP level")
                # h2load counts gRPC errors as successes, but an error carries no message.
                if abs(h.data_bytes_per_request - frame_bytes) > SIZE_SLACK_BYTES:
                    problems.append(
                        f"received {h.data_bytes_per_request:.1f} B per request, not "
                        f"{frame_bytes}: some answers were gRPC errors"
                    )
                if run.other_cores > OTHER_CORES_LIMIT:
                    problems.append(
                        f"other processes kept {run.other_cores:.2f} cores busy: not a clean run"
                    )
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{name} died during the run:\n{s.stderr_tail()}")
                check_answer(call_raw(s.target, message))  # still answering OK after the load
                for problem in problems:
                    warnings.append(f"round {r + 1} {name}: {problem}")
                    print(f"WARNING: {name}: {problem}", flush=True)

        profiles: dict[str, Any] = {}
        if py_spy is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            for name in ("bare", "gateway"):
                profiles[name] = profile(py_spy, h2load, servers[name], body, args, args.out)
    finally:
        for s in servers.values():
            s.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    results = {name: summarise(rs) for name, rs in runs.items()}
    bare_rate = results["bare"]["req_per_s"]
    ratios = {name: results[name]["req_per_s"] / bare_rate for name in results}
    for name, rs in runs.items():
        results[name]["rounds"] = [asdict(r) for r in rs]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info,
        "load": {
            "tool": "h2load", "threads": 1, "connections": args.connections,
            "streams": args.streams, "duration_s": args.duration, "warmup_s": args.warmup,
            "rounds": args.rounds, "request_bytes": len(message), "response_bytes": len(bare_raw),
            "user_id": user, "arm": answer.arm,
            "model": f"{answer.model.id}:{answer.model.version}",
        },
        "variants": {"bare": [], "bare-uvloop": [], **variants},
        "results": results,
        "ratio_vs_bare": ratios,
        "ratio": ratios["gateway"],
        # The gateway runs on uvloop by default; this is its ratio to a bare server on uvloop too.
        "ratio_same_loop": ratios["gateway"] / ratios["bare-uvloop"],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratios["gateway"] >= TARGET_RATIO,
        "warnings": warnings,
        "runtime_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    if profiles:
        report["profile"] = profiles
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (args.out / "e2e.md").write_text(md)
    print()
    print(md)
    ratio = ratios["gateway"]
    print(f"gateway/bare req/s ratio: {ratio:.2f} (target >= {TARGET_RATIO})")
    if ratio < TARGET_RATIO:
        print(
            f"WARNING: the gateway keeps {ratio:.0%} of the bare server's throughput, "
            f"below the {TARGET_RATIO:.0%} target"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
