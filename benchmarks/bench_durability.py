"""The cost of ``--log-durability local`` against the default ``memory``, side by side in one run.

Gateways of both modes (same models, config, database and load; only the flag differs) are
started in alternating rounds (memory, local, memory, local, ...), one fresh process per round
and mode, and each is measured twice with h2load sending Predict:

- open loop at a fixed rate well below saturation (``--rate`` req/s, default 300, spread over
  4 connections with up to 4 requests in flight each, so a slow answer does not hold back the
  next request): p50/p99 of send → end of answer;
- saturation: closed loop, 4 connections × 16 streams: req/s.

Reported: the medians over the rounds per mode, and the ratios local ÷ memory of the median
p50, p99 and saturated req/s. Every gateway logs to one embedded PostgreSQL (or
``--database-url``); h2load shares the cores with the gateway and the database.

Run: python -m benchmarks.bench_durability [--out benchmarks/results/durability.json]
     [--rounds 3] [--seconds 10] [--rate 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from abgate.db.embedded import EmbeddedPostgres
from benchmarks.bench_serving import Gateway, h2load, request_body, saturate

MODES: dict[str, tuple[str, ...]] = {
    "memory": (),
    "local": ("--log-durability", "local"),
}


@contextlib.contextmanager
def _database(url: str | None, tmp: Path) -> Iterator[str]:
    if url:
        yield url
        return
    with EmbeddedPostgres(tmp / "pg") as pg:
        yield pg.url


def _series(runs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(runs), "runs": runs}


def run(
    args: argparse.Namespace, *, store: Path | None = None, config: Path | None = None
) -> dict[str, Any]:
    """The report; ``store``/``config`` given (an already trained demo store and its config)
    skip training the demo models."""
    tmp = Path(tempfile.mkdtemp(prefix="abgate-bench-durability-"))
    try:
        return _run(args, tmp, store, config)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    args: argparse.Namespace, tmp: Path, store: Path | None, config: Path | None
) -> dict[str, Any]:
    from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
    from gateway.modelstore import ModelStore

    if store is None or config is None:
        store = tmp / "models"
        config = write_demo_config(tmp / "demo.toml", train_demo_models(ModelStore(store)))
    X, _ = load_demo_holdout(store)
    seconds, warmup = args.seconds, args.warmup
    results: dict[str, dict[str, list[float]]] = {
        mode: {"p50_ms": [], "p99_ms": [], "open_req_per_s": [], "saturated_req_per_s": []}
        for mode in MODES
    }
    body: Path | None = None
    with _database(args.database_url, tmp) as db:
        for _ in range(args.rounds):
            for mode, extra in MODES.items():
                with Gateway(tmp, config, store, db, 1, *extra) as gw:
                    if body is None:
                        body = request_body(gw.target, X, tmp)  # checked through a gRPC client
                    wal = gw.workdir / f"state-{gw.port}" / "spool" / "main" / "predictions" / "wal"
                    if wal.is_dir() != (mode == "local"):
                        raise RuntimeError(f"{mode} gateway: {wal} exists: {wal.is_dir()}")
                    open_loop = h2load(gw, body, seconds, 4, 4, rps=args.rate, warmup=warmup)
                    saturated = saturate(gw, body, seconds, warmup=warmup)
                    # A gateway that stopped answering shows as neither failures nor errors.
                    if open_loop["req_per_s"] < 0.9 * args.rate or saturated <= 0:
                        raise RuntimeError(
                            f"{mode} gateway did not keep up: {open_loop['req_per_s']} req/s"
                            f" of {args.rate:g} open loop, {saturated} req/s saturated"
                        )
                    r = results[mode]
                    r["p50_ms"].append(open_loop["p50"])
                    r["p99_ms"].append(open_loop["p99"])
                    r["open_req_per_s"].append(open_loop["req_per_s"])
                    r["saturated_req_per_s"].append(saturated)
    modes = {
        mode: {"args": list(MODES[mode]), **{k: _series(v) for k, v in r.items()}}
        for mode, r in results.items()
    }

    def ratio(key: str) -> float:
        return float(modes["local"][key]["median"] / modes["memory"][key]["median"])

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": seconds,
        "warmup": warmup,
        "rate": args.rate,
        "load": {
            "open_loop": f"h2load --rps {args.rate:g} over 4 connections x 4 streams, Predict",
            "saturated": "h2load 4 connections x 16 streams, Predict",
        },
        "modes": modes,
        "ratios_local_over_memory": {
            "open_loop_p50": ratio("p50_ms"),
            "open_loop_p99": ratio("p99_ms"),
            "saturated_req_per_s": ratio("saturated_req_per_s"),
        },
    }


def summary(report: dict[str, Any]) -> str:
    lines = []
    for mode, m in report["modes"].items():
        lines.append(
            f"{mode:>6}: open loop {report['rate']:g} req/s p50 {m['p50_ms']['median']:.2f} ms"
            f" p99 {m['p99_ms']['median']:.2f} ms; saturated"
            f" {m['saturated_req_per_s']['median']:.0f} req/s"
            f" (medians of {report['rounds']})"
        )
    r = report["ratios_local_over_memory"]
    lines.append(
        f"local / memory: p50 {r['open_loop_p50']:.2f}, p99 {r['open_loop_p99']:.2f},"
        f" saturated req/s {r['saturated_req_per_s']:.2f}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/durability.json"))
    parser.add_argument("--rounds", type=int, default=3, help="alternating memory/local rounds")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per h2load run")
    parser.add_argument("--warmup", type=int, default=2, help="h2load warm-up seconds per run")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop req/s")
    parser.add_argument("--database-url", help="PostgreSQL to log to (default: an embedded one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
