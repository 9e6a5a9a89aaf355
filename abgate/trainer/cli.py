"""``abgate trainer`` (run the trainer process) and ``abgate retrain`` (queue a manual
retrain through the evaluator's admin API)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

import grpc

from abgate import cli_common as cli


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the user database
        return ""


def cmd_trainer(args: argparse.Namespace) -> int:
    from abgate.settings import TrainerSettings
    from abgate.trainer.config import config_of

    settings: TrainerSettings = cli.settings_from_args(TrainerSettings, args)
    settings = cli.with_token_file(settings, "token")
    if not settings.database_url:
        raise cli.UsageError(
            "--database-url (or ABGATE_DATABASE_URL) is required: the trainer shares the "
            "evaluator's PostgreSQL"
        )
    cli.database_url_arg(settings.database_url)
    if not settings.token:
        raise cli.UsageError(
            "give ABGATE_TOKEN, --token-file or --token: the trainer asks the evaluator for the "
            "next round"
        )
    cli.peer_target(settings.evaluator, "--evaluator")
    cli.pem_files((None, "--cert"), (None, "--key"), (settings.evaluator_ca, "--evaluator-ca"))
    if not settings.model_store.is_dir():
        raise cli.UsageError(
            f"--model-store {settings.model_store}: no such directory (give the gateways' and "
            "the evaluator's model store)"
        )
    try:
        config_of(settings)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    from abgate.trainer.service import run  # the converters: seconds to import

    return run(settings)


def cmd_retrain(args: argparse.Namespace) -> int:
    from abgate.v1 import control_pb2 as cpb
    from evaluator.cli import AdminClient

    token_file = args.token_file or os.environ.get("ABGATE_TOKEN_FILE") or None
    token = cli.resolve_token(
        args.token or os.environ.get("ABGATE_TOKEN", ""),
        Path(token_file) if token_file is not None else None,
        "--token",
    )
    if not token:
        raise cli.UsageError("give ABGATE_TOKEN, --token-file or --token")
    if not args.experiment:
        raise cli.UsageError("--experiment must name an experiment")
    cli.peer_target(args.evaluator, "--evaluator")
    cli.pem_files((None, "--cert"), (None, "--key"), (args.ca, "--ca"))
    client = AdminClient(args.evaluator, token, ca=args.ca, timeout=args.timeout)
    try:
        request = cpb.RequestRetrainRequest(
            experiment=args.experiment, reason=args.reason, actor=args.by
        )
        r = client.call("RequestRetrain", request)
    except grpc.RpcError as exc:
        cli.error(f"{exc.code().name}: {exc.details()}")
        return cli.EXIT_FAILURE
    finally:
        client.close()
    if args.json:
        doc = {"id": r.id, "created": r.created, "state": r.state, "attempts": r.attempts}
        print(json.dumps(doc, indent=1))
    elif r.created:
        print(f"retrain request {r.id} queued for {args.experiment}")
    else:
        print(
            f"retrain request {r.id} for {args.experiment} was already pending "
            f"({r.attempts} attempts so far); not queued again"
        )
    return cli.EXIT_OK


def add_trainer_parsers(subparsers: Any) -> None:
    from abgate.settings import TrainerSettings

    p = subparsers.add_parser(
        "trainer", help="run a trainer: retrain requests -> registered models -> next rounds"
    )
    cli.add_settings_flags(p, TrainerSettings)
    p.set_defaults(func=cmd_trainer)

    q = subparsers.add_parser("retrain", help="queue a retrain of an experiment's champion")
    q.add_argument("--experiment", required=True, help="experiment name")
    q.add_argument("--reason", default="", help="kept with the request and in the audit table")
    q.add_argument(
        "--by",
        default=os.environ.get("ABGATE_ACTOR") or _login(),  # as `abgate experiments`
        help="who asks, kept in the audit table (env ABGATE_ACTOR; default: your login)",
    )
    q.add_argument(
        "--evaluator",
        default=os.environ.get("ABGATE_EVALUATOR", "127.0.0.1:50061"),
        help="evaluator HOST:PORT (env ABGATE_EVALUATOR)",
    )
    q.add_argument("--token", default=None, help="bearer token (env ABGATE_TOKEN)")
    q.add_argument("--token-file", type=Path, default=None, help="file holding the bearer token")
    q.add_argument("--ca", type=Path, default=None, help="PEM CA: use TLS")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_retrain)
