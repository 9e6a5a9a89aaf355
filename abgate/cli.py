"""The ``abgate`` command: one entry point, subcommands per area.

This module only assembles the areas' parsers (``gateway.cli``, ``evaluator.cli``,
``loadtest.cli``, ``converters.cli``, ``abgate.db.cli``) and dispatches; what they share stands in
``abgate.cli_common``. Exit codes: 0 success, 2 usage error (bad flags or local input), 1 failure
(the message carries the gRPC status name when a call failed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abgate.cli_common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Parser,
    UsageError,
    error,
    writable_dir,
)
from abgate.db.cli import add_db_parser
from abgate.errors import AbgateError
from abgate.trainer.cli import add_trainer_parsers
from converters.cli import add_models_parser
from evaluator.cli import add_evaluator_parsers
from gateway.cli import add_gateway_parsers
from loadtest.cli import add_loadtest_parser


# -- demo -----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from abgate.demo import run_demo

    writable_dir(args.workdir, "--workdir")
    if args.cycle:
        if args.canary:
            raise UsageError("--cycle runs A/B rounds: leave out --canary")
        if args.keep:
            raise UsageError("--keep is for the default demo, not --cycle")
        from abgate.demo_cycle import run_cycle_demo

        return run_cycle_demo(workdir=args.workdir / "cycle", quick=args.quick)
    return run_demo(
        workdir=args.workdir,
        users=args.users,
        workers=args.workers,
        quick=args.quick,
        canary=args.canary,
        keep=args.keep,
    )


def build_parser() -> argparse.ArgumentParser:
    # --log-level works before or after the subcommand (`abgate serve --log-level WARNING`).
    common = Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="logging level (env ABGATE_LOG_LEVEL, default INFO)",
    )
    parser = Parser(prog="abgate", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> Parser:
        return _add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    add_gateway_parsers(sub)
    add_models_parser(sub)
    add_evaluator_parsers(sub)
    add_loadtest_parser(sub)
    add_trainer_parsers(sub)
    add_db_parser(sub)

    p = sub.add_parser("demo", help="train demo models, start a gateway, route some users")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="demo state directory")
    p.add_argument("--users", type=int, default=8, help="how many demo users to route")
    p.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    p.add_argument("--quick", action="store_true", help="shorter traffic phase (for CI)")
    p.add_argument("--canary", action="store_true", help="a canary ramp instead of an A/B test")
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave everything running (dashboard, API, gateway) until Ctrl-C",
    )
    p.add_argument(
        "--cycle",
        action="store_true",
        help="the continuous-learning cycle: round 1, drift and decay, retrain, round 2",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("ABGATE_LOG_LEVEL") or "INFO"
    if not isinstance(logging.getLevelName(level.upper()), int):
        error(f"--log-level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except AbgateError as exc:
        error(f"{exc.code.name}: {exc.message}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A local I/O failure no check foresaw (a disk full, say): one line, not a traceback
        # and not errno text; the traceback only at --log-level DEBUG.
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        error(f"{where}{exc.strerror or exc}")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
