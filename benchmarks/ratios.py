"""Performance as ratios to limits measured beside it: issue #18's table, in one run.

A 2-core machine shared with the load tool cannot meet an absolute target that a server in C
would, and its speed drifts from one run to the next; so every figure here is a ratio of two
measurements taken side by side, in alternating rounds (the order reversed every other round),
medians across rounds:

- ``gateway_vs_bare``: saturated req/s of ``abgate serve`` (route + ONNX + log + metrics) ÷ a bare
  grpc.aio server on the same event loop (uvloop) answering the gateway's own answer bytes;
- ``serial_p99``: p99 with one request in flight (closed loop, 1 connection × 1 stream), the
  gateway with logging ÷ the bare server;
- ``batch_vs_copy``: ``PredictBatch`` rows/s with logging ÷ PostgreSQL's own binary COPY of
  pre-encoded prediction rows into the same table (no gateway, same batch size, random 128-bit
  request ids as the gateway makes);
- ``batch_log_vs_nolog``: ``PredictBatch`` rows/s with logging ÷ without;
- ``stream_vs_batch``: ``PredictBatchStream`` rows/s (a stream whose messages carry many rows)
  ÷ ``PredictBatch`` rows/s on the same gateway, same rows; ``row_stream_vs_batch`` is the same
  for ``PredictStream``'s one row a message (reported, no target);
- ``oip_vs_native``: saturated req/s of OIP V2 ``ModelInfer`` ÷ native ``Predict``, same
  gateway, same row, same user;
- ``vs_mlserver_rate`` and ``vs_mlserver_p99``: the gateway ÷ MLServer (``benchmarks/mlserver``,
  its own virtualenv) serving the same fitted scikit-learn pipeline over OIP V2 ``ModelInfer``
  with the same request: saturated req/s, then p99 of both at MLServer's saturated rate.

Load: h2load (Debian's nghttp2-client) posts one pre-encoded gRPC body per server, checked first
through a real gRPC client (the gateway's and MLServer's probabilities must agree); a run whose
answers are not all of the checked size (a gRPC error carries no message) fails the benchmark.
PredictBatch and PredictStream are driven by grpc.aio clients (``benchmarks.bench_serving``).
Every gateway logs to one embedded PostgreSQL unless named ``nolog``.

Run: python -m benchmarks.ratios [--out benchmarks/results] [--duration 8] [--warmup 2]
     [--rounds 3] [--copy-rows 500000]
Writes ratios.json and ratios.md into --out and prints the table; exit 0 whether or not a target
is met (the table says), 1 when a measurement fails, 2 on bad usage or a missing h2load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from benchmarks.bench_logwriter import make_rows
from benchmarks.bench_serving import (
    batch_rows_per_s,
    batch_stream_rows_per_s,
    stream_rows_per_s,
)
from benchmarks.e2e.cpu import cpu_sample
from benchmarks.e2e.h2load import h2load_command, parse_h2load, parse_h2load_log, percentiles
from benchmarks.e2e.processes import Server, postmaster_pid, start_bare_server, start_gateway
from benchmarks.e2e.report import machine
from benchmarks.e2e.wire import (
    SIZE_SLACK_BYTES,
    bare_response,
    build_request,
    call_raw,
    check_answer,
    grpc_frame,
    pick_user,
)
from benchmarks.mlserver import MODEL, PROBABILITIES, MLServer, write_repository

EXIT_USAGE = 2
OIP_PATH = "/inference.GRPCInferenceService/ModelInfer"
NATIVE_PATH = "/abgate.v1.InferenceGateway/Predict"
# An OIP answer carries the gateway's generated request id twice (``id`` and the parameter).
OIP_SLACK_BYTES = 2 * SIZE_SLACK_BYTES
BATCH_ROWS = 1_000  # rows per PredictBatch call
LOG_BATCH_ROWS = 10_000  # the gateway's --log-batch-rows for batch traffic, and the COPY size


@dataclass(frozen=True)
class Target:
    """One ratio: ``value`` (numerator ÷ denominator) against ``bound``, ``>=`` or ``<=``."""

    key: str
    figure: str
    op: str
    bound: float


TARGETS = (
    Target("gateway_vs_bare", "gateway ÷ bare grpc.aio (both uvloop), saturated req/s", ">=", 0.85),
    Target("serial_p99", "one request in flight, p99: gateway with logging ÷ bare", "<=", 1.25),
    Target("batch_vs_copy", "PredictBatch rows/s with logging ÷ PostgreSQL COPY", ">=", 0.8),
    Target("batch_log_vs_nolog", "PredictBatch rows/s with logging ÷ without", ">=", 0.7),
    Target(
        "stream_vs_batch", "stream rows/s (PredictBatchStream) ÷ PredictBatch rows/s", ">=", 0.8
    ),
    Target("oip_vs_native", "OIP V2 ModelInfer ÷ native Predict, saturated req/s", ">=", 0.9),
    Target("vs_mlserver_rate", "gateway ÷ MLServer, saturated req/s (OIP V2)", ">=", 5.0),
    Target("vs_mlserver_p99", "gateway ÷ MLServer, p99 at MLServer's saturated rate", "<=", 0.2),
)


@dataclass(frozen=True)
class Endpoint:
    """A server and the request h2load posts to it."""

    name: str
    server: Server
    body: Path
    path: str
    frame_bytes: int  # what one answer should weigh on the wire
    slack: int
    db_pids: tuple[int, ...]


def load(
    h2load: str,
    ep: Endpoint,
    work: Path,
    *,
    duration: int,
    warmup: int,
    connections: int,
    streams: int,
    rps: float = 0.0,
) -> dict[str, float]:
    """A warm-up run, then the measured run: req/s, p50/p99 ms, server CPU µs per request."""

    def h2(seconds: int, log: Path | None) -> str:
        cmd = h2load_command(
            h2load, ep.server.port, ep.body, duration=seconds, warmup=0,
            connections=connections, streams=streams, log_file=log,
            rps=rps / connections if rps else 0.0, path=ep.path,
        )  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return proc.stdout

    if warmup > 0:
        h2(warmup, None)
    log = work / f"{ep.name}.h2log"
    a = cpu_sample(ep.server.pid, ep.db_pids)
    out = h2(duration, log)
    b = cpu_sample(ep.server.pid, ep.db_pids)
    res = parse_h2load(out)
    pct = percentiles(parse_h2load_log(log.read_text()))
    log.unlink(missing_ok=True)
    if res.done == 0 or res.succeeded != res.done or res.status_2xx != res.done:
        raise RuntimeError(f"{ep.name}: {res.done - res.succeeded} of {res.done} requests failed")
    if abs(res.data_bytes_per_request - ep.frame_bytes) > ep.slack:
        raise RuntimeError(
            f"{ep.name}: received {res.data_bytes_per_request:.1f} B per answer, not "
            f"{ep.frame_bytes}: some answers were gRPC errors"
        )
    if ep.server.proc.poll() is not None:
        raise RuntimeError(f"{ep.name} died during the run:\n{ep.server.stderr_tail()}")
    per_req = 1e6 / res.done
    return {
        "req_per_s": res.req_per_s,
        "p50_ms": pct["p50"] / 1000.0,
        "p99_ms": pct["p99"] / 1000.0,
        "server_cpu_us_per_req": (b.server_s - a.server_s) * per_req,
        "db_cpu_us_per_req": (b.db_s - a.db_s) * per_req,
    }


def alternate(
    names: Sequence[str], rounds: int, run: Callable[[str], dict[str, float]], label: str
) -> dict[str, list[dict[str, float]]]:
    """``rounds`` rounds of ``run(name)`` over ``names``, reversed every other round."""
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            result = run(name)
            runs[name].append(result)
            shown = "  ".join(
                f"{k} {v:.3f}" if k.endswith("_ms") else f"{k} {v:.0f}" for k, v in result.items()
            )
            print(f"{label} round {r + 1}/{rounds} {name:<20} {shown}", flush=True)
    return runs


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: float(statistics.median(r[k] for r in rs)) for k in rs[0]}
        for name, rs in runs.items()
    }


def oip_request(
    model: str, row: np.ndarray, output: str, user: str | None = None
) -> oip.ModelInferRequest:
    """A one-row ModelInfer request with typed FP32 contents, as KServe clients send it."""
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[1, row.size]
    )
    tensor.contents.fp32_contents.extend(row.astype(np.float32).tolist())
    request = oip.ModelInferRequest(model_name=model, inputs=[tensor])
    request.outputs.add(name=output)
    if user is not None:
        request.parameters["user_id"].string_param = user
    return request


def call_oip(target: str, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
    raw = call_raw_path(target, OIP_PATH, request.SerializeToString())
    return oip.ModelInferResponse.FromString(raw)


def call_raw_path(target: str, path: str, message: bytes, timeout: float = 10.0) -> bytes:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        answer: bytes = call(message, timeout=timeout)
        return answer


def probabilities(response: oip.ModelInferResponse) -> np.ndarray:
    """The one output's FP32 values, typed or raw."""
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    return np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32)


async def copy_rows_per_s(db_url: str, rows: int, run: int) -> float:
    """PostgreSQL's own limit for the log: binary COPY of ``rows`` pre-encoded prediction rows
    into ``predictions`` in transactions of ``LOG_BATCH_ROWS`` rows, as the gateway's sink
    sends them (``gateway.logcopy``), with nothing else in the way.

    The rows carry request ids like the gateway's (128 random bits as 32 hex digits): the
    primary key starts with the request id, and random keys cost PostgreSQL more than ordered
    ones (measured on this VM: ~100k rows/s against 135–165k with ``bench-N-i`` ids)."""
    from gateway import logcopy

    rng = random.Random(run)

    def gateway_like(batch: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        return [(f"{rng.getrandbits(128):032x}", *row[1:]) for row in batch]

    batches = [
        logcopy.encode(
            gateway_like(
                make_rows(min(LOG_BATCH_ROWS, rows - i), run * 1_000 + i // LOG_BATCH_ROWS)
            )
        )
        for i in range(0, rows, LOG_BATCH_ROWS)
    ]
    conn = await asyncpg.connect(db_url)
    try:
        started = time.perf_counter()
        for data in batches:
            async with conn.transaction():
                await conn.copy_to_table(
                    "predictions", source=logcopy.send([data]), columns=logcopy.COPY_COLUMNS,
                    format="binary",
                )  # fmt: skip
        return rows / (time.perf_counter() - started)
    finally:
        await conn.close()


async def settle_and_empty(db_url: str, quiet: float = 0.5, timeout: float = 60.0) -> None:
    """Wait until ``predictions`` has stopped growing for ``quiet`` seconds (the gateways' log
    writers have drained), then empty it."""
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            # The highest seq, not count(*): one index probe whatever the table holds.
            now = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM predictions")
            if now == last:
                break
            last = now
            await asyncio.sleep(quiet)
        await conn.execute("TRUNCATE predictions, prediction_features")
    finally:
        await conn.close()


def run(args: argparse.Namespace, h2load: str) -> dict[str, Any]:
    from abgate.db.embedded import EmbeddedPostgres
    from converters.demo import (
        demo_estimators,
        load_demo_holdout,
        train_demo_models,
        write_demo_config,
    )
    from gateway.modelstore import ModelStore

    started = time.monotonic()
    machine_info = machine(h2load)
    work = Path(tempfile.mkdtemp(prefix="abgate-ratios-"))
    servers: dict[str, Server] = {}
    pg: EmbeddedPostgres | None = None
    try:
        store = work / "models"
        metas = train_demo_models(ModelStore(store))
        config = write_demo_config(work / "experiments.toml", metas)
        X, _ = load_demo_holdout(store)
        row = np.ascontiguousarray(X[0], dtype="<f4")
        pg = EmbeddedPostgres(work / "pg")
        db_url = pg.start()
        db = (postmaster_pid(pg.data_dir),)
        gateways = {
            "gateway": [],
            "gateway-batch": ["--log-batch-rows", str(LOG_BATCH_ROWS)],
            "gateway-batch-nolog": ["--no-log-predictions"],
        }
        for name, extra in gateways.items():
            servers[name] = start_gateway(
                name, extra, config=config, store=store, work=work, db_url=db_url
            )
        grpc_port = write_repository(work / "mlserver", demo_estimators()["demo-logreg"])
        servers["mlserver"] = MLServer(work / "mlserver", grpc_port, work)
        for s in servers.values():
            s.wait_serving()

        # One user the demo experiment routes to "control", the logistic-regression pipeline
        # MLServer serves too.
        gw = servers["gateway"].target
        user = pick_user(gw, row, arm="control")
        native = build_request(row, user).SerializeToString()
        answer = check_answer(call_raw(gw, native), arm="control")
        servers["bare-uvloop"] = start_bare_server(
            "bare-uvloop", "uvloop", bare_response(answer).SerializeToString(), work
        )
        servers["bare-uvloop"].wait_serving()
        bare_raw = call_raw(servers["bare-uvloop"].target, native)
        check_answer(bare_raw, arm="control")
        gw_oip = oip_request("demo", row, "probabilities", user=user)
        ml_oip = oip_request(MODEL, row, PROBABILITIES)
        gw_answer, ml_answer = call_oip(gw, gw_oip), call_oip(servers["mlserver"].target, ml_oip)
        if gw_answer.parameters["arm"].string_param != "control":
            raise AssertionError(f"OIP routed {user} to {gw_answer.parameters['arm']}")
        gw_p, ml_p = probabilities(gw_answer), probabilities(ml_answer)
        native_p = np.array(answer.scores, dtype=np.float32)
        if not (np.allclose(gw_p, ml_p, atol=1e-5) and np.allclose(gw_p, native_p, atol=1e-6)):
            raise AssertionError(f"not the same model: gateway {gw_p}, MLServer {ml_p}")

        def body(name: str, message: bytes) -> Path:
            path = work / f"{name}.grpc"
            path.write_bytes(grpc_frame(message))
            return path

        native_body = body("native", native)
        endpoints = {
            "bare-uvloop": Endpoint(
                "bare-uvloop", servers["bare-uvloop"], native_body, NATIVE_PATH,
                5 + len(bare_raw), SIZE_SLACK_BYTES, (),
            ),
            "gateway": Endpoint(
                "gateway", servers["gateway"], native_body, NATIVE_PATH, 5 + len(bare_raw),
                SIZE_SLACK_BYTES, db,
            ),
            "gateway-oip": Endpoint(
                "gateway-oip", servers["gateway"], body("oip", gw_oip.SerializeToString()),
                OIP_PATH, 5 + gw_answer.ByteSize(), OIP_SLACK_BYTES, db,
            ),
            "mlserver": Endpoint(
                "mlserver", servers["mlserver"], body("mlserver", ml_oip.SerializeToString()),
                OIP_PATH, 5 + ml_answer.ByteSize(), SIZE_SLACK_BYTES, (),
            ),
        }  # fmt: skip
        timing = {"duration": args.duration, "warmup": args.warmup}

        saturated = medians(
            alternate(
                list(endpoints), args.rounds,
                lambda n: load(h2load, endpoints[n], work, connections=4, streams=16, **timing),
                "saturated",
            )
        )  # fmt: skip
        serial = medians(
            alternate(
                ["bare-uvloop", "gateway"], args.rounds,
                lambda n: load(h2load, endpoints[n], work, connections=1, streams=1, **timing),
                "serial",
            )
        )  # fmt: skip
        ml_rate = saturated["mlserver"]["req_per_s"]
        at_ml_rate = medians(
            alternate(
                ["gateway-oip", "mlserver"], args.rounds,
                lambda n: load(
                    h2load, endpoints[n], work, connections=4, streams=16, rps=ml_rate, **timing
                ),
                f"at {ml_rate:.0f} req/s",
            )
        )  # fmt: skip

        refused = {"gateway-batch": [0], "gateway-batch-nolog": [0], "batch-stream": [0]}
        X32 = np.ascontiguousarray(X, dtype="<f4")
        round_no = [0]

        def rows_run(name: str) -> dict[str, float]:
            round_no[0] += 1
            # Every run starts from an empty table with no writer still draining: the
            # primary key on random request ids gets dearer as the table grows (rounds fell
            # from 90k to 57k rows/s without this), and a gateway's log keeps writing its
            # backlog after a run ends.
            asyncio.run(settle_and_empty(db_url))
            if name == "copy":
                rate = asyncio.run(copy_rows_per_s(db_url, args.copy_rows, round_no[0]))
            elif name == "stream":
                rate = asyncio.run(
                    stream_rows_per_s(servers["gateway-batch"].target, X32, args.duration)
                )
            elif name == "batch-stream":
                rate = asyncio.run(
                    batch_stream_rows_per_s(
                        servers["gateway-batch"].target, X32, BATCH_ROWS, args.duration,
                        refused[name],
                    )
                )  # fmt: skip
            else:
                rate = asyncio.run(
                    batch_rows_per_s(
                        servers[name].target, X32, BATCH_ROWS, args.duration, refused[name]
                    )
                )
            return {"rows_per_s": rate}

        rows = medians(
            alternate(
                ["gateway-batch", "gateway-batch-nolog", "copy", "batch-stream", "stream"],
                args.rounds,
                rows_run, "rows",
            )
        )  # fmt: skip
    finally:
        for s in servers.values():
            s.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    def pair(num: float, den: float, unit: str, num_name: str, den_name: str) -> dict[str, Any]:
        return {
            "numerator": {"name": num_name, "value": num},
            "denominator": {"name": den_name, "value": den},
            "unit": unit,
            "value": num / den if den else math.nan,
        }

    sat = saturated
    values = {
        "gateway_vs_bare": pair(
            sat["gateway"]["req_per_s"], sat["bare-uvloop"]["req_per_s"], "req/s",
            "gateway", "bare-uvloop",
        ),
        "serial_p99": pair(
            serial["gateway"]["p99_ms"], serial["bare-uvloop"]["p99_ms"], "ms",
            "gateway", "bare-uvloop",
        ),
        "batch_vs_copy": pair(
            rows["gateway-batch"]["rows_per_s"], rows["copy"]["rows_per_s"], "rows/s",
            "PredictBatch, logging", "PostgreSQL COPY",
        ),
        "batch_log_vs_nolog": pair(
            rows["gateway-batch"]["rows_per_s"], rows["gateway-batch-nolog"]["rows_per_s"],
            "rows/s", "PredictBatch, logging", "PredictBatch, no logging",
        ),
        "stream_vs_batch": pair(
            rows["batch-stream"]["rows_per_s"], rows["gateway-batch"]["rows_per_s"], "rows/s",
            "PredictBatchStream", "PredictBatch",
        ),
        "row_stream_vs_batch": pair(
            rows["stream"]["rows_per_s"], rows["gateway-batch"]["rows_per_s"], "rows/s",
            "PredictStream (one row a message)", "PredictBatch",
        ),
        "oip_vs_native": pair(
            sat["gateway-oip"]["req_per_s"], sat["gateway"]["req_per_s"], "req/s",
            "ModelInfer", "Predict",
        ),
        "vs_mlserver_rate": pair(
            sat["gateway-oip"]["req_per_s"], sat["mlserver"]["req_per_s"], "req/s",
            "gateway (OIP)", "MLServer",
        ),
        "vs_mlserver_p99": pair(
            at_ml_rate["gateway-oip"]["p99_ms"], at_ml_rate["mlserver"]["p99_ms"], "ms",
            "gateway (OIP)", "MLServer",
        ),
    }  # fmt: skip
    for t in TARGETS:
        v = values[t.key]
        v["target"] = f"{t.op} {t.bound:g}"
        v["met"] = bool(v["value"] >= t.bound if t.op == ">=" else v["value"] <= t.bound)
        v["figure"] = t.figure
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info,
        "settings": {
            "duration": args.duration,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "copy_rows": args.copy_rows,
            "batch_rows": BATCH_ROWS,
            "log_batch_rows": LOG_BATCH_ROWS,
            "mlserver": _mlserver_version(),
        },
        "ratios": values,
        "runs": {
            "saturated": saturated,
            "serial": serial,
            "at_mlserver_rate": {"rate": ml_rate, **at_ml_rate},
            "rows": rows,
            "batch_calls_refused": {k: v[0] for k, v in refused.items()},
        },
    }


def _mlserver_version() -> str:
    from benchmarks.mlserver import REQUIREMENTS

    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("mlserver=="):
            return line.split("==")[1].split()[0]
    return "?"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"# Ratios to this machine's measured limits ({report['date']})",
        "",
        f"{s['rounds']} alternating rounds, medians; h2load runs of {s['duration']} s after "
        f"{s['warmup']} s of warm-up; PredictBatch calls of {s['batch_rows']:,} rows "
        f"(--log-batch-rows {s['log_batch_rows']:,}); COPY of {s['copy_rows']:,} rows a round; "
        f"MLServer {s['mlserver']}. Machine: {m['nproc']} cores "
        f"({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}, "
        f"onnxruntime {m['onnxruntime']}; "
        f"{report['seconds']:.0f} s in all.",
        "",
        "| figure | measured | limit beside it | ratio | target | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t in TARGETS:
        v = report["ratios"][t.key]
        num, den, unit = v["numerator"], v["denominator"], v["unit"]
        fmt = "{:,.3f}" if unit == "ms" else "{:,.0f}"
        lines.append(
            f"| {t.figure} | {num['name']}: {fmt.format(num['value'])} {unit} | "
            f"{den['name']}: {fmt.format(den['value'])} {unit} | **{v['value']:.2f}** | "
            f"{v['target']} | {'met' if v['met'] else 'not met'} |"
        )
    r = report["runs"]
    lines += ["", "Saturated (h2load -c 4 -m 16), medians:", ""]
    lines += ["| server | req/s | p50 ms | p99 ms | server CPU µs/req | db CPU µs/req |"]
    lines += ["|---|---:|---:|---:|---:|---:|"]
    for name, v in r["saturated"].items():
        lines.append(
            f"| {name} | {v['req_per_s']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
            f"{v['server_cpu_us_per_req']:.0f} | {v['db_cpu_us_per_req']:.0f} |"
        )
    refused = r["batch_calls_refused"]
    lines += [
        "",
        f"PredictBatch calls refused by a full log queue (retried, not counted): "
        f"{refused['gateway-batch']} with logging, {refused['gateway-batch-nolog']} without; "
        f"PredictBatchStream messages answered UNAVAILABLE by it: {refused['batch-stream']}.",
        "",
        f"PredictStream, one row a message (4 streams × 64 in flight): "
        f"{r['rows']['stream']['rows_per_s']:,.0f} rows/s, "
        f"{report['ratios']['row_stream_vs_batch']['value']:.2f} of PredictBatch.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted seconds before a run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--copy-rows", type=int, default=500_000, help="rows per COPY round")
    parser.add_argument("--h2load", default="h2load", help="h2load executable")
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.copy_rows) < 1 or args.warmup < 0:
        parser.error("--duration, --rounds and --copy-rows must be >= 1, --warmup >= 0")
    h2load = shutil.which(args.h2load)
    if h2load is None:
        print(
            f"ratios: error: {args.h2load!r} not found (Debian/Ubuntu: apt-get install "
            "nghttp2-client)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        report = run(args, h2load)
    except (RuntimeError, AssertionError, grpc.RpcError, OSError) as exc:
        print(f"ratios: error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ratios.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "ratios.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
