"""The report: the machine it ran on, the JSON document and the markdown written to
``--out`` (``e2e.json``, ``e2e.md``), and the ratio printed against the target."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from abgate.v1 import gateway_pb2 as pb
from benchmarks.e2e.measure import RunResult, ratios_vs_bare, summarise
from benchmarks.e2e.profile import PROFILE_RATE

TARGET_RATIO = 0.85


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


def build_report(
    args: argparse.Namespace,
    *,
    started: float,
    machine_info: dict[str, Any],
    request_bytes: int,
    response_bytes: int,
    user: str,
    answer: pb.PredictResponse,
    variants: Mapping[str, list[str]],
    runs: Mapping[str, Sequence[RunResult]],
    warnings: list[str],
    profiles: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document: the load, the medians and every round per server, the ratios."""
    results = {name: summarise(rs) for name, rs in runs.items()}
    ratios = ratios_vs_bare(results)
    for name, rs in runs.items():
        results[name]["rounds"] = [asdict(r) for r in rs]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info,
        "load": {
            "tool": "h2load", "threads": 1, "connections": args.connections,
            "streams": args.streams, "duration_s": args.duration, "warmup_s": args.warmup,
            "rounds": args.rounds, "request_bytes": request_bytes,
            "response_bytes": response_bytes, "user_id": user, "arm": answer.arm,
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
    return report


def write_report(report: Mapping[str, Any], out: Path) -> None:
    """``e2e.json`` and ``e2e.md`` into ``out``; the markdown and the ratio on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (out / "e2e.md").write_text(md)
    print()
    print(md)
    ratio = report["ratio"]
    print(f"gateway/bare req/s ratio: {ratio:.2f} (target >= {TARGET_RATIO})")
    if ratio < TARGET_RATIO:
        print(
            f"WARNING: the gateway keeps {ratio:.0%} of the bare server's throughput, "
            f"below the {TARGET_RATIO:.0%} target"
        )
