"""What every ``abgate`` command shares: exit codes, the usage error, one-line messages, the
checks of local input (each a ``UsageError`` naming its flag) and settings <-> flags.

The ground of the command line: each area's CLI (``gateway.cli``, ``evaluator.cli``,
``loadtest.cli``, ``converters.cli``, ``abgate.db.cli``) imports it, and ``abgate.cli`` only
assembles their parsers and dispatches. Nothing here imports an area.

Exit codes: 0 success, 2 usage error (bad flags or local input), 1 failure (the message carries
the gRPC status name when a call failed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from abgate.addresses import check_bindable, check_target, split_listen
from abgate.settings import load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad flags or local input: exit code 2."""


def error(message: str) -> None:
    print(f"abgate: error: {message}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
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


def token_from_file(path: Path, flag: str) -> str:
    """The token a file holds (``--token-file``): its text without surrounding whitespace, so
    ``openssl rand -hex 24 > token`` works; one line naming the flag for anything else."""
    readable_file(path, flag)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text") from None
    if not token:
        raise UsageError(f"{flag} {path}: is empty")
    if not token.isascii() or not token.isprintable():
        # It travels as an HTTP/2 header value: printable ASCII only.
        raise UsageError(f"{flag} {path}: the token must be one line of printable ASCII")
    return token


def resolve_token(token: str | None, token_file: Path | None, flag: str) -> str:
    """``flag`` (``--token``) or ``flag-file``, each from the command line or the environment;
    not both. Empty when neither is given."""
    if token_file is None:
        return token or ""
    if token:
        env = "ABGATE_" + flag.removeprefix("--").replace("-", "_").upper()
        raise UsageError(
            f"give {flag} or {flag}-file (or {env} or {env}_FILE), not both: which one counts "
            "would be a guess"
        )
    return token_from_file(token_file, f"{flag}-file")


def with_token_file(settings: Any, field: str) -> Any:
    """``settings`` with ``<field>`` read from ``<field>_file`` when that is given, and the
    file field cleared (one source of the token from here on)."""
    flag = "--" + field.replace("_", "-")
    token = resolve_token(getattr(settings, field), getattr(settings, field + "_file"), flag)
    return dataclasses.replace(settings, **{field: token, field + "_file": None})


def add_settings_flags(parser: argparse.ArgumentParser, cls: type) -> None:
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


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return load_settings(cls, {k: v for k, v in vars(args).items() if k in names})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def add_database_flags(parser: argparse.ArgumentParser) -> None:
    """``--database-url``/``--pg-data`` of a one-shot command (see ``local_database``)."""
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (env ABGATE_DATABASE_URL); without one, an embedded server is started",
    )
    parser.add_argument(
        "--pg-data",
        type=Path,
        default=None,
        help="embedded server data directory (env ABGATE_PG_DATA, default var/pg)",
    )
