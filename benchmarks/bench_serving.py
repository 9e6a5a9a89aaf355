"""Serving targets of issue #5, measured side by side in one run:

- unloaded latency: h2load at 100 req/s on one connection (C client: what the server adds; our
  Python `abgate loadtest` at 50 req/s is reported beside it, client cost included), and h2load
  with one request in flight back to back (Triton perf_analyzer's concurrency 1): at 100 req/s
  every request also pays for waking the idle gRPC and event-loop threads (~1 ms here, the bare
  server too), which back-to-back requests do not;
- shadow cost: the same gateway config with and without a shadow model at 100 %: saturated
  req/s (h2load, 4 connections × 16 streams) and p99 at half of the shadow-off saturation
  (h2load --rps on 4 connections), alternating rounds, medians;
- batch throughput: PredictBatch and PredictStream rows/s with logging on;
- workers: saturated req/s of `--workers 2` ÷ `--workers 1` (h2load, 8 connections).

Every gateway logs to one embedded PostgreSQL (logging on, as in production). The load
generators share the 2 cores with the server. h2load sends one pre-encoded request (one user,
checked through a real gRPC client first); its latency is send → end of answer per request.

Run: python -m benchmarks.bench_serving [--out benchmarks/results] [--duration 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from abgate.addresses import free_port
from abgate.db.embedded import EmbeddedPostgres
from abgate.v1 import gateway_pb2 as pb
from abgate.v1 import gateway_pb2_grpc as pb_grpc
from benchmarks.e2e.h2load import h2load_command, parse_h2load, parse_h2load_log, percentiles
from benchmarks.e2e.wire import build_request, call_raw, check_answer, grpc_frame

TARGETS = {
    "unloaded_p50_ms": 0.5,
    "unloaded_p99_ms": 0.8,
    "shadow_p99_increase": 0.10,
    "batch_rows_per_s": 150_000.0,
}


def abgate(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", *args], capture_output=True, text=True, check=True, **kw
    )


class Gateway:
    def __init__(
        self, workdir: Path, config: Path, store: Path, db: str, workers: int, *extra: str
    ) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        cmd = [
            sys.executable, "-m", "benchmarks.bare_server", "--listen", self.target,
        ] if workers == 0 else [  # workers == 0: the bare server, for comparison
            sys.executable, "-m", "abgate", "serve", "--listen", self.target,
            "--config", str(config), "--model-store", str(store),
            "--state-dir", str(workdir / f"state-{self.port}"), "--database-url", db,
            "--workers", str(workers), "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        self.log = open(workdir / f"gateway-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Gateway:
        from abgate.demo import wait_serving

        wait_serving(self.target, timeout=120)
        time.sleep(0.5)  # every worker of --workers has bound too
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def loadtest(target: str, store: Path, *args: str) -> dict[str, Any]:
    out = abgate(
        "loadtest", "--target", target, "--experiment", "demo", "--model-store", str(store),
        "--users", "100000", "--quiet", "--json", *args,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def h2load(
    gw: Gateway,
    body: Path,
    duration: float,
    connections: int,
    streams: int,
    rps: float = 0,
    warmup: int = 2,
) -> dict[str, Any]:
    """One h2load run (after a ``warmup`` s warm-up run, none at 0): req/s, latency
    percentiles in ms."""
    log = body.with_suffix(".log")
    runs = ((warmup, None), (int(duration), log)) if warmup else ((int(duration), log),)
    for seconds, log_file in runs:
        cmd = h2load_command(
            "h2load", gw.port, body, duration=seconds, warmup=0, connections=connections,
            streams=streams, log_file=log_file, rps=rps / connections,
        )  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = parse_h2load(out)
    times = parse_h2load_log(log.read_text())
    log.unlink()
    pct = percentiles(times)
    if res.failed or res.errored or res.data_bytes < 100 * res.done:
        raise RuntimeError(f"h2load saw failures or empty answers: {out[-1500:]}")
    return {"req_per_s": res.req_per_s, **{k: v / 1000.0 for k, v in pct.items()}}


def request_body(target: str, X: np.ndarray, workdir: Path) -> Path:
    message = build_request(X[0], "bench-user-1").SerializeToString()
    check_answer(call_raw(target, message))
    body = workdir / "request.bin"
    body.write_bytes(grpc_frame(message))
    return body


def saturate(
    gw: Gateway, body: Path, duration: float, connections: int = 4, warmup: int = 2
) -> float:
    return float(h2load(gw, body, duration, connections, 16, warmup=warmup)["req_per_s"])


def open_loop(target: str, store: Path, rate: float, duration: float) -> dict[str, Any]:
    return loadtest(
        target, store, "--mode", "open", "--rate", f"{rate:.0f}", "--duration", str(duration),
        "--warmup", "2", "--concurrency", "256",
    )  # fmt: skip


async def batch_rows_per_s(
    target: str, X: np.ndarray, rows: int, duration: float, refused: list[int]
) -> float:
    """Closed loop of PredictBatch calls of ``rows`` rows over 2 channels; rows/s answered
    (``refused[0]`` counts calls the full log queue turned away)."""
    matrix = np.ascontiguousarray(X[np.arange(rows) % len(X)], dtype="<f4")
    tensor = pb.Tensor(shape=list(matrix.shape), raw=matrix.tobytes(), datatype="FP32")
    done = 0
    stop = time.perf_counter() + duration

    async def loop(stub: pb_grpc.InferenceGatewayStub, k: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            users = [f"b{k}-{i}-{j}" for j in range(rows)]
            try:
                await stub.PredictBatch(
                    pb.PredictBatchRequest(experiment="demo", user_ids=users, features=tensor)
                )
            except grpc.aio.AioRpcError as exc:
                # The log writer's backpressure: its queue is full, retry shortly. Only rows
                # that were answered (and so have their log row queued) count.
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                refused[0] += 1
                await asyncio.sleep(0.01)
                continue
            done += rows
            i += 1

    channels = [grpc.aio.insecure_channel(target) for _ in range(2)]
    started = time.perf_counter()
    await asyncio.gather(
        *(loop(pb_grpc.InferenceGatewayStub(channels[k % 2]), k) for k in range(4))
    )
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()
    return done / elapsed


async def stream_rows_per_s(target: str, X: np.ndarray, duration: float) -> float:
    """PredictStream with 4 streams, each keeping 64 requests in flight; answers/s."""
    rows = [np.ascontiguousarray(X[i % len(X)][None, :], dtype="<f4") for i in range(64)]
    tensors = [pb.Tensor(shape=list(r.shape), raw=r.tobytes(), datatype="FP32") for r in rows]
    answered = 0
    stop = time.perf_counter() + duration

    async def one(stub: pb_grpc.InferenceGatewayStub, k: int) -> None:
        nonlocal answered
        window = asyncio.Semaphore(64)
        call = stub.PredictStream()

        async def reader() -> None:
            nonlocal answered
            async for _ in call:
                answered += 1
                window.release()

        read = asyncio.create_task(reader())
        i = 0
        while time.perf_counter() < stop:
            await window.acquire()
            await call.write(
                pb.PredictRequest(experiment="demo", user_id=f"s{k}-{i}", features=tensors[i % 64])
            )
            i += 1
        await call.done_writing()
        await read

    channel = grpc.aio.insecure_channel(target)
    started = time.perf_counter()
    await asyncio.gather(*(one(pb_grpc.InferenceGatewayStub(channel), k) for k in range(4)))
    elapsed = time.perf_counter() - started
    await channel.close()
    return answered / elapsed


async def batch_stream_rows_per_s(
    target: str, X: np.ndarray, rows: int, duration: float, refused: list[int]
) -> float:
    """PredictBatchStream as ``batch_rows_per_s`` drives PredictBatch: 4 streams over 2
    channels, messages of ``rows`` rows, each stream keeping 2 messages in flight; rows/s
    answered (``refused[0]`` counts messages the full log queue answered UNAVAILABLE)."""
    matrix = np.ascontiguousarray(X[np.arange(rows) % len(X)], dtype="<f4")
    tensor = pb.Tensor(shape=list(matrix.shape), raw=matrix.tobytes(), datatype="FP32")
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    done = 0
    stop = time.perf_counter() + duration

    async def one(stub: pb_grpc.InferenceGatewayStub, k: int) -> None:
        nonlocal done
        window = asyncio.Semaphore(2)
        call = stub.PredictBatchStream()

        async def reader() -> None:
            nonlocal done
            async for answer in call:
                if answer.error_code == 0:
                    done += len(answer.response.labels)
                elif answer.error_code == unavailable:
                    refused[0] += 1
                    await asyncio.sleep(0.01)  # the log writer's backpressure: back off
                else:
                    raise RuntimeError(f"PredictBatchStream: {answer.error_message}")
                window.release()

        read = asyncio.create_task(reader())
        i = 0
        while time.perf_counter() < stop:
            await window.acquire()
            users = [f"t{k}-{i}-{j}" for j in range(rows)]
            await call.write(
                pb.PredictBatchRequest(experiment="demo", user_ids=users, features=tensor)
            )
            i += 1
        await call.done_writing()
        await read

    channels = [grpc.aio.insecure_channel(target) for _ in range(2)]
    started = time.perf_counter()
    await asyncio.gather(*(one(pb_grpc.InferenceGatewayStub(channels[k % 2]), k) for k in range(4)))
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()
    return done / elapsed


def markdown(report: dict[str, Any]) -> str:
    r = report
    sh = r["shadow"]
    lines = [
        f"# Serving benchmarks ({r['date']})",
        "",
        f"h2load and `abgate loadtest` on the same 2 cores as the server; logging on; "
        f"{r['duration']} s measured per run, {r['rounds']} alternating rounds, medians.",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| unloaded p50 (h2load, {r['unloaded']['rate']:.0f} req/s, 1 connection) | "
        f"{r['unloaded']['p50_ms']:.3f} ms | ≤ {TARGETS['unloaded_p50_ms']} ms |",
        f"| unloaded p99 (h2load) | {r['unloaded']['p99_ms']:.3f} ms | "
        f"≤ {TARGETS['unloaded_p99_ms']} ms |",
        f"| same for a bare grpc.aio server (constant answer): p50 / p99 | "
        f"{r['unloaded']['bare_p50_ms']:.3f} / {r['unloaded']['bare_p99_ms']:.3f} ms | |",
        f"| one request in flight (h2load closed loop, 1 connection × 1 stream, as "
        f"perf_analyzer's concurrency 1): p50 / p99, gateway | "
        f"{r['unloaded']['serial_p50_ms']:.3f} / {r['unloaded']['serial_p99_ms']:.3f} ms | "
        f"≤ {TARGETS['unloaded_p50_ms']} / {TARGETS['unloaded_p99_ms']} ms |",
        f"| one request in flight, bare grpc.aio server: p50 / p99 | "
        f"{r['unloaded']['bare_serial_p50_ms']:.3f} / "
        f"{r['unloaded']['bare_serial_p99_ms']:.3f} ms | |",
        f"| unloaded p50 / p99 (abgate loadtest, Python client, 50 req/s) | "
        f"{r['unloaded']['loadtest_50rps_p50_ms']:.3f} / "
        f"{r['unloaded']['loadtest_50rps_p99_ms']:.3f} ms | |",
        f"| saturated req/s, shadow off | {sh['saturated_off']:.0f} | |",
        f"| saturated req/s, shadow 100 % | {sh['saturated_on']:.0f} "
        f"(×{sh['saturated_ratio']:.2f}) | |",
        f"| p99 at half saturation ({sh['half_rate']:.0f} req/s), shadow off | "
        f"{sh['p99_off_ms']:.2f} ms | |",
        f"| p99 at half saturation, shadow 100 % | {sh['p99_on_ms']:.2f} ms "
        f"({sh['p99_increase']:+.0%}) | ≤ +{TARGETS['shadow_p99_increase']:.0%} |",
        f"| PredictBatch rows/s (1,000-row calls, --log-batch-rows 10000; "
        f"{r['batch_calls_refused']} calls refused by the full log queue) | "
        f"{r['batch_rows_per_s']:.0f} | "
        f"≥ {TARGETS['batch_rows_per_s']:.0f} |",
        f"| PredictStream answers/s (4 streams × 64 in flight) | {r['stream_rows_per_s']:.0f} | "
        f"≥ {TARGETS['batch_rows_per_s']:.0f} |",
        f"| saturated req/s, 1 worker → 2 workers | {r['workers']['one']:.0f} → "
        f"{r['workers']['two']:.0f} (×{r['workers']['ratio']:.2f}) | |",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    tmp = Path(tempfile.mkdtemp(prefix="abgate-bench-serving-"))
    store = tmp / "models"
    metas = train_demo_models(ModelStore(store))
    plain = write_demo_config(tmp / "plain.toml", metas)
    forest = next(m for m in metas if m.id == "demo-forest").sha256
    shadowed = tmp / "shadow.toml"
    shadowed.write_text(
        plain.read_text().replace(
            '[[experiments]]\nname = "demo-3way"',
            f'[[experiments.shadows]]\nname = "forest"\nmodel = "{forest}"\nsample_rate = 1.0\n\n'
            '[[experiments]]\nname = "demo-3way"',
        )
    )
    X, _ = load_demo_holdout(store)
    d = args.duration
    with EmbeddedPostgres(tmp / "pg") as pg:
        db = pg.url
        with Gateway(tmp, plain, store, db, 1) as gw:
            body = request_body(gw.target, X, tmp)
            unloaded = h2load(gw, body, d, 1, 1, rps=args.unloaded_rate)
            serial = h2load(gw, body, d, 1, 1)
            unloaded_py = open_loop(gw.target, store, 50, d)
        # The same measurement of the transport alone: a bare grpc.aio server, constant answer.
        with Gateway(tmp, plain, store, db, 0) as bare:
            unloaded_bare = h2load(bare, body, d, 1, 1, rps=args.unloaded_rate)
            serial_bare = h2load(bare, body, d, 1, 1)
        sat: dict[str, list[float]] = {"off": [], "on": []}
        p99: dict[str, list[float]] = {"off": [], "on": []}
        half = 0.0
        for _ in range(args.rounds):
            for kind, config in (("off", plain), ("on", shadowed)):
                with Gateway(tmp, config, store, db, 1) as gw:
                    sat[kind].append(saturate(gw, body, d))
                    if kind == "off" and not half:
                        half = sat[kind][-1] / 2
                    p99[kind].append(h2load(gw, body, d, 4, 1, rps=half)["p99"])
        refused = [0]
        # Batch-heavy traffic wants the log writer's biggest batches (see bench_logwriter).
        with Gateway(tmp, plain, store, db, 1, "--log-batch-rows", "10000") as gw:
            batch = asyncio.run(batch_rows_per_s(gw.target, X, 1000, d, refused))
            stream = asyncio.run(stream_rows_per_s(gw.target, X, d))
        with Gateway(tmp, plain, store, db, 1) as gw:
            one = saturate(gw, body, d, connections=8)
        with Gateway(tmp, plain, store, db, 2) as gw:
            two = saturate(gw, body, d, connections=8)
    med = statistics.median
    p99_off, p99_on = med(p99["off"]), med(p99["on"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "duration": d,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "unloaded": {
            "rate": args.unloaded_rate,
            "p50_ms": unloaded["p50"],
            "p99_ms": unloaded["p99"],
            "bare_p50_ms": unloaded_bare["p50"],
            "bare_p99_ms": unloaded_bare["p99"],
            "serial_p50_ms": serial["p50"],
            "serial_p99_ms": serial["p99"],
            "bare_serial_p50_ms": serial_bare["p50"],
            "bare_serial_p99_ms": serial_bare["p99"],
            "loadtest_50rps_p50_ms": unloaded_py["latency_ms"]["p50"],
            "loadtest_50rps_p99_ms": unloaded_py["latency_ms"]["p99"],
        },
        "shadow": {
            "saturated_off": med(sat["off"]),
            "saturated_on": med(sat["on"]),
            "saturated_ratio": med(sat["on"]) / med(sat["off"]),
            "half_rate": half,
            "p99_off_ms": p99_off,
            "p99_on_ms": p99_on,
            "p99_increase": p99_on / p99_off - 1.0,
            "runs": {"saturated": sat, "p99_ms": p99},
        },
        "batch_rows_per_s": batch,
        "batch_calls_refused": refused[0],
        "stream_rows_per_s": stream,
        "workers": {"one": one, "two": two, "ratio": two / one},
        "targets": TARGETS,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating shadow off/on rounds")
    parser.add_argument("--unloaded-rate", type=float, default=100.0, help="req/s when unloaded")
    args = parser.parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "serving.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
