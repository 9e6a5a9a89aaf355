"""h2load, the load tool: its command line for one pre-encoded gRPC body, and its report and
per-request log parsed (h2load prints no percentiles: they come from the log)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.e2e.wire import PATH

PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


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
    rps: float = 0.0,
    path: str = PATH,
) -> list[str]:
    """h2load posting ``body`` to ``path``; ``rps`` > 0 caps each connection at that rate
    (an open loop), 0 keeps every stream busy (a closed loop)."""
    cmd = [
        h2load, "-t", "1", "-c", str(connections), "-m", str(streams),
        "-D", str(duration), f"--warm-up-time={warmup}",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]  # fmt: skip
    if rps > 0:
        cmd.append(f"--rps={rps:.1f}")
    if log_file is not None:
        cmd.append(f"--log-file={log_file}")
    cmd.append(f"http://127.0.0.1:{port}{path}")
    return cmd


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
