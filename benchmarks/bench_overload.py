"""Overload: goodput and what an admitted call waits, at 1×, 2× and 3× the gateway's saturation,
with admission control on (the default ``--max-pending-calls``) and off (0: gRPC's own bound,
1,000 / 3,000), side by side in one run.

The flood is h2load's open loop (``--rps`` per connection, many streams allowed, one pre-encoded
Predict body): C, so the load tool takes far less CPU than the gateway it floods. Saturation is
first measured closed-loop on the gateway with gRPC's default bound. During each flood a probe
(``abgate loadtest``, open loop, 50 req/s, 2 s deadline) is a client among the others: its
answered p99 (from intended send time) is what an admitted caller sees, and its errors by status
say how the others were refused. Goodput is h2load's received message bytes ÷ the answer's size
÷ seconds (an error carries no message). The probe's p99 alone, unloaded, is the reference of
"admitted p99 within 2× of unloaded". Rounds alternate the two gateways; medians are reported.

Run: python -m benchmarks.bench_overload --out benchmarks/results/overload.json
     [--seconds 8] [--rounds 2] [--loads 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.e2e.h2load import parse_h2load
from benchmarks.e2e.processes import Server, start_gateway
from benchmarks.e2e.wire import PATH, build_request, call_raw, check_answer, grpc_frame, pick_user

EXIT_USAGE = 2
PROBE_RATE = 50.0
PROBE_TIMEOUT_S = 2.0
CONNECTIONS = 4
DEFAULT = "grpc-default"  # --max-pending-calls 0: gRPC's own 1,000 / 3,000


def variants(bounds: Sequence[int]) -> dict[str, list[str]]:
    """Gateway name -> `abgate serve` flags: one per --max-pending-calls bound, and gRPC's."""
    out = {f"pending-{b}": ["--max-pending-calls", str(b)] for b in bounds}
    out[DEFAULT] = ["--max-pending-calls", "0"]
    return out


def h2load(
    exe: str, port: int, body: Path, seconds: int, *, rps_per_connection: float | None
) -> dict[str, Any]:
    """One h2load run: closed loop (16 streams per connection) or open loop at ``--rps``."""
    cmd = [
        exe, "-t", "1", "-c", str(CONNECTIONS), "-D", str(seconds),
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]  # fmt: skip
    if rps_per_connection is None:
        cmd += ["-m", "16"]
    else:
        # Streams enough that the open loop is never held back by answers in flight.
        cmd += ["-m", "256", f"--rps={rps_per_connection:.1f}"]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    res = parse_h2load(proc.stdout)
    return {"done": res.done, "data_bytes": res.data_bytes, "req_per_s": res.req_per_s}


def start_probe(target: str, seconds: float, store: Path, warmup: float) -> subprocess.Popen[str]:
    """``abgate loadtest`` at PROBE_RATE: ``warmup`` uncounted seconds, then ``seconds``."""
    return subprocess.Popen(
        [sys.executable, "-m", "abgate", "--log-level", "WARNING", "loadtest",
         "--target", target, "--experiment", "demo", "--rate", str(PROBE_RATE),
         "--duration", f"{seconds:.1f}", "--warmup", f"{warmup:.1f}", "--drain", "3",
         "--timeout", str(PROBE_TIMEOUT_S), "--model-store", str(store), "--quiet", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def probe_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The probe's answered p50/p99 and errors by status."""
    stdout, stderr = proc.communicate(timeout=120)
    if not stdout.strip():  # exit 1 with a report only means some requests failed
        raise RuntimeError(f"loadtest printed no report ({proc.returncode}): {stderr[-2000:]}")
    doc = json.loads(stdout)
    return {
        "sent": doc["sent"],
        "ok": doc["ok"],
        "errors": doc["errors"],
        "p50_ms": doc["latency_ms"]["p50"],
        "p99_ms": doc["latency_ms"]["p99"],
    }


def probe(target: str, seconds: float, store: Path) -> dict[str, Any]:
    return probe_result(start_probe(target, seconds, store, warmup=0.5))


def flood(
    exe: str, server: Server, body: Path, answer_bytes: int, rate: float, seconds: int, store: Path
) -> dict[str, Any]:
    """h2load at ``rate`` req/s for ``seconds`` with the probe running inside that window."""
    # The probe connects and sends its first request before the flood, then is counted
    # from 1.5 s in, once the flood's queue has built, until 1 s before the flood ends.
    time.sleep(2.0)  # the previous flood's calls are done with
    proc = start_probe(server.target, seconds - 2.5, store, warmup=1.5)
    time.sleep(0.8)
    got = h2load(exe, server.port, body, seconds, rps_per_connection=rate / CONNECTIONS)
    p = probe_result(proc)
    answered = got["data_bytes"] / answer_bytes
    return {
        "offered_per_s": rate,
        "goodput_per_s": round(answered / seconds, 1),
        "h2load_done": got["done"],
        "probe": p,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overload.json"))
    parser.add_argument("--seconds", type=int, default=8, help="seconds of each flood")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (median)")
    parser.add_argument("--loads", default="1,2,3", help="multiples of saturation to offer")
    parser.add_argument(
        "--bounds", default="256", help="--max-pending-calls values to compare with gRPC's"
    )
    parser.add_argument("--h2load", default="h2load")
    args = parser.parse_args(argv)
    exe = shutil.which(args.h2load)
    if exe is None:
        print(
            "bench_overload: error: h2load not found (apt-get install nghttp2-client)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        loads = [float(x) for x in args.loads.split(",")]
        bounds = [int(x) for x in args.bounds.split(",")]
    except ValueError:
        parser.error("--loads and --bounds are comma-separated numbers")
    if args.seconds < 4 or args.rounds < 1 or not loads or min(loads) <= 0 or min(bounds) < 1:
        parser.error("--seconds >= 4, --rounds >= 1, --loads and --bounds positive")
    report = run(exe, loads, bounds, args.seconds, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    return 0


def run(
    exe: str, loads: list[float], bounds: list[int], seconds: int, rounds: int
) -> dict[str, Any]:
    from abgate.db.embedded import EmbeddedPostgres
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    work = Path(tempfile.mkdtemp(prefix="abgate-overload-"))
    servers: dict[str, Server] = {}
    pg = EmbeddedPostgres(work / "pg")
    try:
        store = work / "models"
        metas = train_demo_models(ModelStore(store))
        config = write_demo_config(work / "experiments.toml", metas)
        X, _ = load_demo_holdout(store)
        db_url = pg.start()
        for name, extra in variants(bounds).items():
            servers[name] = start_gateway(
                name, extra, config=config, store=store, work=work, db_url=db_url
            )
        for s in servers.values():
            s.wait_serving()
        row = np.ascontiguousarray(X[0], dtype="<f4")
        message = build_request(row, pick_user(servers[DEFAULT].target, row))
        raw = message.SerializeToString()
        answer = check_answer(call_raw(servers[DEFAULT].target, raw), arm="treatment")
        answer_bytes = len(grpc_frame(answer.SerializeToString()))
        body = work / "predict.grpc"
        body.write_bytes(grpc_frame(raw))

        off = servers[DEFAULT]
        saturation = statistics.median(
            h2load(exe, off.port, body, 5, rps_per_connection=None)["req_per_s"]
            for _ in range(rounds)
        )
        unloaded = {name: probe(s.target, 6.0, store) for name, s in servers.items()}
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in servers}
        for r in range(rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for load in loads:
                for name in order:
                    res = flood(
                        exe, servers[name], body, answer_bytes, load * saturation, seconds, store
                    )
                    cells[name].setdefault(f"{load:g}x", []).append(res)
        summary = {
            name: {
                load: {
                    "goodput_per_s": statistics.median(c["goodput_per_s"] for c in runs),
                    "goodput_share_of_saturation": round(
                        statistics.median(c["goodput_per_s"] for c in runs) / saturation, 3
                    ),
                    "admitted_p99_ms": statistics.median(c["probe"]["p99_ms"] for c in runs),
                    "admitted_p99_over_unloaded": round(
                        statistics.median(c["probe"]["p99_ms"] for c in runs)
                        / max(unloaded[name]["p99_ms"], 1e-3),
                        2,
                    ),
                    "probe_answered_share": round(
                        statistics.median(
                            c["probe"]["ok"] / max(c["probe"]["sent"], 1) for c in runs
                        ),
                        3,
                    ),
                    "probe_errors": [c["probe"]["errors"] for c in runs],
                }
                for load, runs in cells[name].items()
            }
            for name in servers
        }
        return {
            "saturation_req_per_s": round(saturation, 1),
            "unloaded_probe": unloaded,
            "summary": summary,
            "runs": cells,
            "seconds": seconds,
            "rounds": rounds,
        }
    finally:
        for s in servers.values():
            s.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(report: dict[str, Any]) -> str:
    lines = [
        "saturation (closed loop, gRPC's default bound): "
        f"{report['saturation_req_per_s']:.0f} req/s",
        f"{'gateway':<14}{'load':>5}{'goodput/s':>11}{'÷sat':>7}{'p99 ms':>9}{'÷unloaded':>11}"
        f"{'probe ok':>10}  probe errors",
    ]
    for name, by_load in report["summary"].items():
        unloaded = report["unloaded_probe"][name]["p99_ms"]
        lines.append(f"{name:<14}{'0':>5}{'':>11}{'':>7}{unloaded:>9.2f}{1.0:>11.2f}")
        for load, c in by_load.items():
            lines.append(
                f"{name:<14}{load:>5}{c['goodput_per_s']:>11.0f}"
                f"{c['goodput_share_of_saturation']:>7.2f}{c['admitted_p99_ms']:>9.2f}"
                f"{c['admitted_p99_over_unloaded']:>11.2f}{c['probe_answered_share']:>10.3f}"
                f"  {c['probe_errors']}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
