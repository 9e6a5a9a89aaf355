"""The one error hierarchy: every domain error carries its gRPC status code.

Servicers map these to statuses in one place (``gateway.servicer``); the CLI maps them to exit
codes. Anything that is not an ``AbgateError`` becomes INTERNAL with no details leaked.
"""

from __future__ import annotations

import grpc

# A client's string in an error message is shown up to this many characters: a 1 MiB name
# echoed whole would not fit gRPC's 16 KiB of trailing metadata (the caller would get
# RESOURCE_EXHAUSTED instead of the error), and logs would carry it too.
ECHO_CHARS = 64


def shown(value: object) -> str:
    """``value`` as an error message quotes it: its ``repr`` when short; past ``ECHO_CHARS``
    characters (of a string) or of ``repr`` (of a list, a shape) the start and the size:
    ``'aaaa…'… (1048576 bytes)``, ``[1, 1, 1, …… (2000 items)``. The one way values a client
    sent enter error messages."""
    if isinstance(value, str | bytes):
        if len(value) <= ECHO_CHARS:
            return repr(value)
        n = len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else len(value)
        return f"{value[:ECHO_CHARS]!r}… ({n} bytes)"
    text = repr(value)
    if len(text) <= ECHO_CHARS:
        return text
    try:
        size = f" ({len(value)} items)"  # type: ignore[arg-type]
    except TypeError:
        size = ""
    return f"{text[:ECHO_CHARS]}…{size}"


class AbgateError(Exception):
    """Base of all domain errors; ``code`` is the gRPC status the client sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)


class InvalidArgument(AbgateError):
    """Bad input from the caller; ``field`` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AbgateError):
    """Unknown experiment or model."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(AbgateError):
    """Our own overload limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AbgateError):
    """Draining, or not configured yet."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(AbgateError):
    """Stale or out-of-order config, or an operation the current state forbids."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(AbgateError):
    """A request id already used for another request (the field names which)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(AbgateError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AbgateError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(InvalidArgument):
    """An experiments config (file or snapshot) failed validation; the old one keeps serving."""
