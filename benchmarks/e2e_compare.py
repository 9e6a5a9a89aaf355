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

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.e2e.measure import run_rounds
from benchmarks.e2e.processes import (
    BARE_SERVERS,
    Server,
    gateway_variants,
    postmaster_pid,
    start_bare_server,
    start_gateway,
)
from benchmarks.e2e.profile import profile
from benchmarks.e2e.report import build_report, machine, write_report
from benchmarks.e2e.wire import (
    SIZE_SLACK_BYTES,
    bare_response,
    build_request,
    call_raw,
    check_answer,
    grpc_frame,
    pick_user,
)

EXIT_USAGE = 2


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
        for name, extra in variants.items():
            servers[name] = start_gateway(
                name, extra, config=config, store=store, work=work, db_url=db_url
            )
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
            servers[name] = start_bare_server(
                name, loop, bare_response(answer).SerializeToString(), work
            )
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
        runs, warnings = run_rounds(
            h2load, servers, order, body, message, frame_bytes, args, work, db_pids
        )

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

    report = build_report(
        args,
        started=started,
        machine_info=machine_info,
        request_bytes=len(message),
        response_bytes=len(bare_raw),
        user=user,
        answer=answer,
        variants=variants,
        runs=runs,
        warnings=warnings,
        profiles=profiles,
    )
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
