"""py-spy during one more load run per server (``--profile``): the collapsed stacks of the thread
holding the GIL, kept next to the report, summarised as µs of GIL-held time per request."""

from __future__ import annotations

import argparse
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.e2e.h2load import parse_h2load
from benchmarks.e2e.measure import run_h2load
from benchmarks.e2e.processes import Server

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
