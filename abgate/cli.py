"""The ``abgate`` command: one entry point, subcommands per area.

Exit codes: 0 success, 2 usage error (bad flags or local input), 1 failure (the message carries
the gRPC status name when a call failed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from abgate.addresses import check_bindable, check_target, split_listen
from abgate.errors import AbgateError
from abgate.settings import GatewaySettings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad flags or local input: exit code 2."""


def error(message: str) -> None:
    print(f"abgate: error: {message}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line in the form every other error takes; argparse's default prints
    the whole usage block first (20 lines for ``serve``). ``--help`` still shows it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"abgate: error: {message} (see '{self.prog} --help')\n")


# -- checks of local input, before anything starts: each a UsageError naming the flag ---------
def peer_target(value: str, flag: str) -> str:
    """A gRPC peer address the user typed (see ``abgate.addresses.check_target``)."""
    try:
        return check_target(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def listen_address(value: str, flag: str) -> tuple[str, int]:
    try:
        return split_listen(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def free_listen_port(host: str, port: int, flag: str, *, reuse_port: bool = False) -> None:
    """A port another process holds is an environment failure: ``Unavailable`` (exit 1)."""
    try:
        check_bindable(host, port, flag, reuse_port=reuse_port)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def readable_file(path: Path, flag: str) -> Path:
    """``path`` opens for reading: else one line naming the flag, never errno text."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    try:
        # Opened, not stat()ed: that is the question (permissions, ACLs). O_NONBLOCK so that a
        # named pipe without a writer yet does not hang the check; nothing is read.
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {path}: is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"{flag} {path}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    return path


def writable_dir(path: Path, flag: str) -> Path:
    """``path`` is a directory, created (with its parents) when missing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{flag} {path}: is a file, not a directory") from None
    except NotADirectoryError:
        raise UsageError(f"{flag} {path}: a parent of it is a file, not a directory") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create the directory ({exc.strerror})") from None
    return path


def pem_files(cert: tuple[Path | None, str], key: tuple[Path | None, str],
              ca: tuple[Path | None, str]) -> None:  # fmt: skip
    """Readable PEM: a CA bundle, and a certificate with its private key. gRPC would accept
    any bytes here and later print C-core log lines (and fail every call as UNAVAILABLE)."""
    import ssl

    for path, flag in (cert, key, ca):
        if path is not None:
            readable_file(path, flag)
    if ca[0] is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca[0])
        except (ssl.SSLError, ValueError):
            raise UsageError(f"{ca[1]} {ca[0]}: not a PEM certificate (bundle)") from None
    if cert[0] is not None and key[0] is not None:
        try:
            # A password callback that gives none: OpenSSL would otherwise prompt on the tty
            # for an encrypted key, which gRPC cannot use anyway.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                cert[0], key[0], password=lambda: b""
            )
        except (ssl.SSLError, ValueError):
            raise UsageError(
                f"{cert[1]} {cert[0]} / {key[1]} {key[0]}: not a PEM certificate and its "
                "(unencrypted) private key"
            ) from None


def database_url_arg(url: str | None) -> None:
    if url and not url.startswith(("postgresql://", "postgres://")):
        # The URL may carry a password: not echoed.
        raise UsageError("--database-url (or ABGATE_DATABASE_URL) must be a postgresql:// URL")


def local_database(url: str | None, pg_data: Path | None) -> None:
    """The ``--database-url``/``--pg-data`` pair of a one-shot command (``db``, ``report``),
    resolved as ``abgate.db.embedded.database_url`` does."""
    url = url or os.environ.get("ABGATE_DATABASE_URL")
    database_url_arg(url)
    if not url:
        writable_dir(pg_data or Path(os.environ.get("ABGATE_PG_DATA", "var/pg")), "--pg-data")


def _add_settings_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per settings field (``--max-batch-rows``), help taken from the field's doc."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = (
            f"{f.metadata.get('doc', '')} (env ABGATE_{f.name.upper()}, default {f.default})"
        )
        if f.type in ("bool", bool):
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        kind: Any = {"int": int, "float": float}.get(str(f.type), str)
        if "Path" in str(f.type):
            kind = Path
        parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def _settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return load_settings(cls, {k: v for k, v in vars(args).items() if k in names})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- serve ----------------------------------------------------------------------------------
def _check_config_file(settings: GatewaySettings) -> None:
    """Refuse a ``--config`` file the gateway could not start from, here, before anything
    starts (and once, not once per worker): read, parse, validate, and find every model in
    the store. With a saved snapshot under ``--state-dir`` the server serves that instead of
    a bad file (README "Experiments config"), so then the server decides."""
    from gateway.config import ConfigError, load_config_file
    from gateway.control import SNAPSHOT_FILE
    from gateway.modelstore import ModelStore, ModelStoreError

    if settings.config is None or (settings.state_dir / SNAPSHOT_FILE).is_file():
        return
    path = readable_file(settings.config, "--config")
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        raise UsageError(f"--config {path}: {exc.message}") from None
    store = ModelStore(settings.model_store)
    for i, spec in enumerate(config.experiments):
        refs = [(f"arms[{j}]", a.model) for j, a in enumerate(spec.arms)]
        refs += [(f"shadows[{k}]", sh.model) for k, sh in enumerate(spec.shadows)]
        for where, ref in refs:
            try:
                store.resolve(ref)
            except ModelStoreError as exc:
                raise UsageError(
                    f"--config {path}: experiments[{i}].{where}.model: {exc} (--model-store)"
                ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigFileError
    from gateway.server import event_loop_factory, serve

    settings: GatewaySettings = _settings_from_args(GatewaySettings, args)
    host, port = listen_address(settings.listen, "--listen")
    metrics = (
        listen_address(settings.metrics_listen, "--metrics-listen")
        if settings.metrics_listen
        else None
    )
    try:
        event_loop_factory(settings.event_loop)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if settings.workers < 1:
        raise UsageError("--workers must be at least 1")
    if settings.evaluator:
        from gateway.subscriber import channel_credentials

        peer_target(settings.evaluator, "--evaluator")
        if not settings.evaluator_token:
            raise UsageError("--evaluator needs --evaluator-token (or ABGATE_EVALUATOR_TOKEN)")
        pem_files(
            (settings.evaluator_cert, "--evaluator-cert"),
            (settings.evaluator_key, "--evaluator-key"),
            (settings.evaluator_ca, "--evaluator-ca"),
        )
        try:
            channel_credentials(
                settings.evaluator_ca, settings.evaluator_cert, settings.evaluator_key
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    writable_dir(settings.state_dir, "--state-dir")
    if settings.log_predictions:
        database_url_arg(settings.database_url)
        if settings.spool_dir is not None:
            writable_dir(settings.spool_dir, "--spool-dir")
        if not settings.database_url:
            writable_dir(settings.pg_data, "--pg-data")
    _check_config_file(settings)
    # Last, as they are the environment's state rather than the input: exit 1, UNAVAILABLE.
    free_listen_port(host, port, "--listen", reuse_port=settings.reuse_port)
    if metrics is not None:
        for i in range(settings.workers if settings.workers > 1 else 1):
            # As the supervisor hands them out: worker i listens on port + i.
            free_listen_port(metrics[0], metrics[1] + i if metrics[1] else 0, "--metrics-listen")
    try:
        return serve(settings)
    except ConfigFileError as exc:
        raise UsageError(f"--config {exc.message}") from None


# -- predict --------------------------------------------------------------------------------
def _parse_features(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--features must be comma-separated numbers, got {text!r}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from abgate.client import GatewayClient, RpcFailure

    peer_target(args.target, "--target")
    features = _parse_features(args.features)
    if not features:
        raise UsageError("--features must hold at least one number")
    with GatewayClient(args.target, timeout=args.timeout) as client:
        try:
            result = client.predict(args.experiment, args.user, features, args.request_id or "")
        except RpcFailure as exc:
            error(str(exc))
            return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        model = result["model"]
        scores = ", ".join(f"{s:.4f}" for s in result["scores"])
        print(
            f"user={args.user} experiment={result['experiment']} arm={result['arm']} "
            f"model={model['id']}:{model['version']} sha256={model['sha256'][:12]} "
            f"label={result['label']} scores=[{scores}] bucket={result['bucket']} "
            f"config_version={result['config_version']} request_id={result['request_id']}"
        )
    return EXIT_OK


# -- outcome --------------------------------------------------------------------------------
def cmd_outcome(args: argparse.Namespace) -> int:
    from abgate.client import GatewayClient, RpcFailure

    peer_target(args.target, "--target")
    if len(args.request_id) != len(args.value):
        raise UsageError("give one --value per --request-id")
    triples = [(r, v, args.source) for r, v in zip(args.request_id, args.value, strict=True)]
    with GatewayClient(args.target, timeout=args.timeout) as client:
        try:
            accepted = client.record_outcomes(triples)
        except RpcFailure as exc:
            error(str(exc))
            return EXIT_FAILURE
    print(json.dumps({"accepted": accepted}) if args.json else f"accepted {accepted} outcome(s)")
    return EXIT_OK


# -- db -------------------------------------------------------------------------------------
def cmd_db(args: argparse.Namespace) -> int:
    from abgate.db.embedded import database_url

    if args.db_command == "partitions" and (
        args.ensure_days < 0
        or (args.drop_older_than_days is not None and args.drop_older_than_days < 1)
    ):
        raise UsageError("--ensure-days must be >= 0 and --drop-older-than-days >= 1")
    local_database(args.database_url, args.pg_data)
    try:
        with database_url(args.database_url, args.pg_data) as url:
            if args.db_command == "partitions":
                return _partitions(url, args)
            return _migrations(url, args)
    except OSError as exc:
        error(f"UNAVAILABLE: cannot reach PostgreSQL: {exc.strerror or exc}")
        return EXIT_FAILURE


def _migrations(url: str, args: argparse.Namespace) -> int:
    import asyncio

    from abgate.db.migrate import applied, available, migrate

    if args.db_command == "migrate":
        names = asyncio.run(migrate(url))
        done = asyncio.run(applied(url))
        if args.json:
            print(json.dumps({"applied_now": names, "applied": done}))
        else:
            print(f"applied now: {', '.join(names) or 'nothing (up to date)'}")
        return EXIT_OK
    done = asyncio.run(applied(url))
    pending = [m.name for m in available() if m.name not in done]
    if args.json:
        print(json.dumps({"applied": done, "pending": pending}))
    else:
        print(f"applied: {', '.join(done) or '-'}\npending: {', '.join(pending) or '-'}")
    return EXIT_OK


def _partitions(url: str, args: argparse.Namespace) -> int:
    import asyncio
    import datetime as dt

    import asyncpg

    from abgate.db import partitions as parts
    from abgate.db.migrate import migrate

    async def run() -> dict[str, Any]:
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            created = await parts.ensure_partitions(conn, days_ahead=args.ensure_days)
            dropped: list[str] = []
            if args.drop_older_than_days is not None:
                today = dt.datetime.now(dt.UTC).date()
                cutoff = today - dt.timedelta(days=args.drop_older_than_days)
                dropped = await parts.drop_partitions_before(conn, cutoff)
            listed = await parts.list_partitions(conn)
        finally:
            await conn.close()
        return {
            "created": created,
            "dropped": dropped,
            "partitions": [{"name": p.name, "rows_estimate": p.rows} for p in listed],
        }

    result = asyncio.run(run())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"created: {', '.join(result['created']) or '-'}")
        print(f"dropped: {', '.join(result['dropped']) or '-'}")
        for p in result["partitions"]:
            print(f"  {p['name']} (~{max(p['rows_estimate'], 0)} rows)")
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from abgate.demo import run_demo

    writable_dir(args.workdir, "--workdir")
    return run_demo(
        workdir=args.workdir,
        users=args.users,
        workers=args.workers,
        quick=args.quick,
        canary=args.canary,
    )


def build_parser() -> argparse.ArgumentParser:
    # --log-level works before or after the subcommand (`abgate serve --log-level WARNING`).
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="logging level (env ABGATE_LOG_LEVEL, default INFO)",
    )
    parser = _Parser(prog="abgate", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> _Parser:
        return _add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("serve", help="run the inference gateway")
    _add_settings_flags(p, GatewaySettings)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="send one Predict call and print the answer")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway HOST:PORT")
    p.add_argument("--experiment", required=True)
    p.add_argument("--user", required=True, help="user id (routing key)")
    p.add_argument("--features", required=True, help="comma-separated float values")
    p.add_argument("--request-id", default="", help="idempotency key (generated when omitted)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("outcome", help="record outcomes (labels, rewards) for predictions")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway HOST:PORT")
    p.add_argument("--request-id", action="append", required=True, help="repeatable")
    p.add_argument("--value", action="append", type=float, required=True, help="one per id")
    p.add_argument("--source", default="", help="who observed it (first value per source wins)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_outcome)

    from converters.cli import add_models_parser

    add_models_parser(sub)

    from evaluator.cli import add_evaluator_parsers

    add_evaluator_parsers(sub)

    from evaluator.report import add_report_parser

    add_report_parser(sub)

    from loadtest.cli import add_loadtest_parser

    add_loadtest_parser(sub)

    p = sub.add_parser("db", help="database schema: migrate, status")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (
        ("migrate", "apply pending migrations"),
        ("status", "list migrations"),
        ("partitions", "create upcoming daily partitions of predictions; drop old ones"),
    ):
        q = dbsub.add_parser(name, help=text)
        q.add_argument(
            "--database-url",
            default=None,
            help="PostgreSQL URL (env ABGATE_DATABASE_URL); "
            "without one, an embedded server is started",
        )
        q.add_argument(
            "--pg-data",
            type=Path,
            default=None,
            help="embedded server data directory (env ABGATE_PG_DATA, default var/pg)",
        )
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "partitions":
            q.add_argument("--ensure-days", type=int, default=7, help="days ahead to prepare")
            q.add_argument("--drop-older-than-days", type=int, default=None,
                           help="retention: drop daily partitions older than this")  # fmt: skip
        q.set_defaults(func=cmd_db)

    p = sub.add_parser("demo", help="train demo models, start a gateway, route some users")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="demo state directory")
    p.add_argument("--users", type=int, default=8, help="how many demo users to route")
    p.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    p.add_argument("--quick", action="store_true", help="shorter traffic phase (for CI)")
    p.add_argument("--canary", action="store_true", help="a canary ramp instead of an A/B test")
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
