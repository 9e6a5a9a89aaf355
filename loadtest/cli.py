"""``abgate loadtest``: flags → LoadTestSettings → run → table, JSON, plot, histogram file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from abgate.cli_common import EXIT_FAILURE, EXIT_OK, UsageError, error, resolve_token
from loadtest.settings import MODES, LoadTestSettings

DEFAULTS = LoadTestSettings()


def _help(name: str) -> str:
    f = LoadTestSettings.__dataclass_fields__[name]
    return f"{f.metadata['doc']} (default {f.default})"


def add_loadtest_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="open-loop load generator (native API or OIP V2), HDR latency histograms",
        description=(
            "Send load at a fixed arrival rate (open loop; latency counts from each request's "
            "intended send time, so a slow server cannot hide its queue) or from C "
            "request loops (closed loop, for saturation throughput)."
        ),
    )
    add = p.add_argument
    add("--target", default=DEFAULTS.target, help=_help("target"))
    add("--protocol", choices=("native", "oip"), default=DEFAULTS.protocol, help=_help("protocol"))
    add("--experiment", default=DEFAULTS.experiment, help=_help("experiment"))
    add("--oip-input-name", default=DEFAULTS.oip_input_name, help=_help("oip_input_name"))
    add("--mode", choices=MODES, default=DEFAULTS.mode, help=_help("mode"))
    add("--rate", type=float, default=None, help="target arrival rate, req/s over all workers "
        "(required in open mode)")  # fmt: skip
    add("--arrival", choices=("constant", "poisson"), default=DEFAULTS.arrival,
        help=_help("arrival"))  # fmt: skip
    add("--connections", type=int, default=DEFAULTS.connections, help=_help("connections"))
    add("--duration", type=float, default=DEFAULTS.duration, help=_help("duration"))
    add("--warmup", type=float, default=DEFAULTS.warmup, help=_help("warmup"))
    add("--workers", type=int, default=DEFAULTS.workers, help=_help("workers"))
    add("--concurrency", type=int, default=DEFAULTS.concurrency,
        help=_help("concurrency") + "; a request that finds the cap reached waits for a slot "
        "and its wait counts in its latency")  # fmt: skip
    add("--channels", type=int, default=DEFAULTS.channels, help=_help("channels"))
    add("--timeout", type=float, default=DEFAULTS.timeout, help=_help("timeout"))
    add("--drain", type=float, default=DEFAULTS.drain,
        help=_help("drain") + "; requests still unsent then count as UNSENT errors")  # fmt: skip
    add("--connect-timeout", type=float, default=DEFAULTS.connect_timeout,
        help=_help("connect_timeout"))  # fmt: skip
    add("--users", type=int, default=DEFAULTS.users, help=_help("users"))
    add("--user-dist", choices=("uniform", "zipf"), default=DEFAULTS.user_dist,
        help=_help("user_dist"))  # fmt: skip
    add("--zipf-s", type=float, default=DEFAULTS.zipf_s, help=_help("zipf_s"))
    add("--model-store", type=Path, default=None,
        help="model store with the demo holdout: features and true labels "
        "(env ABGATE_MODEL_STORE, default var/models)")  # fmt: skip
    add("--features", type=int, default=None,
        help="send random normal rows of N features instead of the holdout")  # fmt: skip
    add("--outcomes", action="store_true", help=_help("outcomes") + " (RecordOutcome)")
    add("--outcome-rate", type=float, default=DEFAULTS.outcome_rate, help=_help("outcome_rate"))
    add("--outcome-flip", type=float, default=DEFAULTS.outcome_flip, help=_help("outcome_flip"))
    add("--outcome-source", default=DEFAULTS.outcome_source, help=_help("outcome_source"))
    add("--seed", type=int, default=DEFAULTS.seed, help=_help("seed"))
    add("--run-id", default=None, help="tag in request ids lt-RUN-WORKER-SEQ (default random)")
    add("--client-token", default=None,
        help=_help("client_token") + "; prefer ABGATE_CLIENT_TOKEN or --client-token-file: a "
        "command line shows in ps")  # fmt: skip
    add("--client-token-file", type=Path, default=None,
        help="file holding that token (env ABGATE_CLIENT_TOKEN_FILE)")  # fmt: skip
    add("--quiet", action="store_true", help="no progress line on stderr")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--plot", type=Path, default=None, help="write a latency plot (PNG)")
    add("--histogram-out", type=Path, default=None,
        help="write the measured latency histogram (HdrHistogram base64 encoding, µs)")  # fmt: skip
    p.set_defaults(func=cmd_loadtest)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def settings_from_args(args: argparse.Namespace) -> LoadTestSettings:
    """Build and check the settings; UsageError (exit 2) for anything that cannot run."""
    import secrets

    if args.mode == "closed" and args.rate is not None:
        raise UsageError("--rate applies to --mode open; a closed loop sends as fast as answered")
    if args.mode == "open" and args.rate is None:
        raise UsageError("--rate R is required in open mode (or use --mode closed)")
    if args.features is not None and args.features < 1:
        raise UsageError("--features must be >= 1")
    store: Path | None = None
    if not args.features:
        store = args.model_store or Path(os.environ.get("ABGATE_MODEL_STORE", "var/models"))
        from loadtest.features import HOLDOUT_FILE

        if not (store / HOLDOUT_FILE).is_file():
            raise UsageError(
                f"no demo holdout in model store {store} (run `abgate models demo` or "
                "pass --model-store); or send random rows with --features N"
            )
    for path, flag in ((args.plot, "--plot"), (args.histogram_out, "--histogram-out")):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{flag} {path}: directory {path.parent} does not exist")
        if path is not None and path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory, not a file")
    settings = LoadTestSettings(
        target=args.target,
        protocol=args.protocol,
        experiment=args.experiment,
        oip_input_name=args.oip_input_name,
        mode=args.mode,
        rate=args.rate or 0.0,
        arrival=args.arrival,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        concurrency=args.concurrency,
        channels=args.channels,
        timeout=args.timeout,
        drain=args.drain,
        connect_timeout=args.connect_timeout,
        users=args.users,
        user_dist=args.user_dist,
        zipf_s=args.zipf_s,
        model_store=store,
        features=args.features or 0,
        outcomes=args.outcomes,
        outcome_rate=args.outcome_rate,
        outcome_flip=args.outcome_flip,
        outcome_source=args.outcome_source,
        seed=args.seed,
        run_id=args.run_id or secrets.token_hex(4),
        client_token=resolve_token(
            args.client_token or os.environ.get("ABGATE_CLIENT_TOKEN"),
            args.client_token_file or _env_path("ABGATE_CLIENT_TOKEN_FILE"),
            "--client-token",
        ),
    )
    try:
        settings.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(settings.run_id) > 64 or not settings.run_id.replace("-", "").isalnum():
        raise UsageError("--run-id must be 1-64 letters, digits or '-'")
    return settings


def cmd_loadtest(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from loadtest import report
    from loadtest.runner import TargetError, run_load

    on_second = None
    if not args.quiet:
        tty = sys.stderr.isatty()

        def on_second(sec: Any) -> None:
            line = report.progress_line(sec)
            # On a terminal one line is rewritten in place (\x1b[K clears its old tail).
            text = f"\r{line}\x1b[K" if tty else f"{line}\n"
            print(text, end="", file=sys.stderr, flush=True)

    try:
        result = run_load(settings, on_second)
    except TargetError as exc:
        error(f"{exc} (target {settings.target})")
        return EXIT_FAILURE
    except RuntimeError as exc:
        error(f"INTERNAL: load generator failed: {exc}")
        return EXIT_FAILURE
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.histogram_out is not None:
        report.write_histogram(result, args.histogram_out)
    if args.plot is not None:
        report.write_plot(result, args.plot)
    if args.json:
        print(json.dumps(report.to_json(result)))
    else:
        print(report.summary_table(result))
    if result.ok == 0:
        if result.errors:
            status, n = max(result.errors.items(), key=lambda kv: kv[1])
            error(f"{status}: no request succeeded ({n} of {result.sent + result.unsent} failed "
                  f"with {status}; target {settings.target})")  # fmt: skip
        else:
            error("UNAVAILABLE: no request succeeded")
        return EXIT_FAILURE
    return EXIT_OK
