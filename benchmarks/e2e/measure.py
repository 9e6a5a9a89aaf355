"""Measuring: one run (a separate warm-up run, then the measured run between two CPU samples),
the alternating rounds with the checks after every run, the medians across rounds and the
ratios to the bare server."""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.e2e.cpu import cpu_sample
from benchmarks.e2e.h2load import (
    H2loadResult,
    h2load_command,
    parse_h2load,
    parse_h2load_log,
    percentiles,
)
from benchmarks.e2e.processes import BARE_SERVERS, Server
from benchmarks.e2e.wire import SIZE_SLACK_BYTES, call_raw, check_answer

# Busy cores outside the servers, their database and h2load above which a run is flagged.
OTHER_CORES_LIMIT = 0.15


@dataclass
class RunResult:
    h2load: H2loadResult
    server_cpu_us_per_req: float
    db_cpu_us_per_req: float
    h2load_cpu_us_per_req: float
    # busy cores of everything else on the machine during the run (other users' jobs, kernel
    # work not charged to a process): above ~0.15 the run is contaminated
    other_cores: float
    # server CPU µs per request by thread role (see cpu.thread_cpu_s): [user, system]
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


def run_rounds(
    h2load: str,
    servers: Mapping[str, Server],
    order: Sequence[str],
    body: Path,
    message: bytes,
    frame_bytes: int,
    args: argparse.Namespace,
    work: Path,
    db_pids: Sequence[int],
) -> tuple[dict[str, list[RunResult]], list[str]]:
    """``args.rounds`` rounds over the servers in ``order`` (reversed every other round), each
    run checked afterwards; every server's runs, and the warnings about unclean runs."""
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
    return runs, warnings


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


def ratios_vs_bare(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Every server's median req/s divided by the bare server's."""
    bare_rate = results["bare"]["req_per_s"]
    return {name: results[name]["req_per_s"] / bare_rate for name in results}
