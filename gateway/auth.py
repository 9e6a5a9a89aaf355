"""Data-plane client identities: the bearer tokens of ``--client-tokens-file``, checked on every
call's metadata by the surface's ``authorize`` hook, and the identity of the call in progress.

The surface runs ``ClientTokens`` in the call's own task before gRPC reads the request, and a
call that fails it is answered UNAUTHENTICATED without any handler running. On success it sets
``CLIENT_IDENTITY`` in that task's context, where the handler (same task) reads it: no second
look at the metadata, and nothing per call when tokens are off (the default is ``""``).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path

from abgate.errors import InvalidArgument

# The identity of the data-plane call running in this task ("" without client tokens).
CLIENT_IDENTITY: ContextVar[str] = ContextVar("abgate_client_identity", default="")

IDENTITY_PATTERN = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
MIN_TOKEN_CHARS = 16
_TOKEN_PATTERN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces (an HTTP header)
_BEARER = b"Bearer "


class ClientTokensError(InvalidArgument):
    """The tokens file was refused; ``message`` leaves the path to the caller."""


class ClientTokens:
    """``authorization: Bearer <token>`` → the client identity it was issued to.

    Tokens are looked up by their SHA-256 digest: the time a lookup takes depends on the digest
    of what was sent, never on how many leading characters of it match a real token, so timing
    reveals nothing usable about any token (the control plane's ``TokenAuth`` compares its one
    token with ``hmac.compare_digest`` to the same end)."""

    def __init__(self, identities: Mapping[str, str]) -> None:
        """``identities``: identity → token."""
        by_digest: dict[bytes, str] = {}
        for identity, token in identities.items():
            if not isinstance(identity, str) or not IDENTITY_PATTERN.match(identity):
                raise ClientTokensError(
                    f"identity {identity!r}: use 1-128 of A-Z a-z 0-9 _ . @ : -"
                )
            if not isinstance(token, str) or not _TOKEN_PATTERN.match(token):
                raise ClientTokensError(
                    f"clients.{identity}: the token must be printable ASCII without spaces"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise ClientTokensError(
                    f"clients.{identity}: the token is shorter than {MIN_TOKEN_CHARS} characters"
                )
            digest = hashlib.sha256(token.encode()).digest()
            if digest in by_digest:
                raise ClientTokensError(
                    f"clients.{identity}: same token as clients.{by_digest[digest]}"
                )
            by_digest[digest] = identity
        if not by_digest:
            raise ClientTokensError("names no client (a [clients] table of identity = token)")
        self._by_digest = by_digest

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self._by_digest.values())

    def identity(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        """The identity of the call's bearer token, None when it has none or a wrong one."""
        given: str | bytes | None = None
        for key, value in metadata:
            if key == "authorization":
                given = value
        if given is None:
            return None
        raw = given.encode() if isinstance(given, str) else given
        if not raw.startswith(_BEARER):
            return None
        return self._by_digest.get(hashlib.sha256(raw[len(_BEARER) :]).digest())

    def __call__(self, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        """The surface's ``authorize`` hook: False refuses the call (UNAUTHENTICATED)."""
        identity = self.identity(metadata)
        if identity is None:
            return False
        CLIENT_IDENTITY.set(identity)
        return True


def load_client_tokens(path: Path) -> ClientTokens:
    """Read a TOML (``.toml``) or JSON (anything else) file with a ``clients`` table of
    ``identity = "token"``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ClientTokensError(f"cannot read it: {exc.strerror}") from None
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(text.decode()) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientTokensError(f"not valid {kind}: {exc}") from None
    clients = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(clients, dict):
        raise ClientTokensError("needs a [clients] table of identity = token")
    return ClientTokens(clients)
