"""Network addresses as users type them: a listen address (``HOST:PORT``) and a gRPC peer
target, checked before anything binds or dials. Each problem is one ``ValueError`` line that
names the flag; a listen port another process holds is ``Unavailable``.

gRPC itself is lenient where a user needs it strict: a target without a port dials :443, an
out-of-range listen port wraps modulo 65536, and a failed bind prints C-core log lines to stderr
before any error reaches Python.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from abgate.errors import Unavailable

_FORMS = "HOST:PORT, [IPV6]:PORT, dns:///HOST:PORT or unix:PATH"


def _host_port(text: str, flag: str, shown: str, *, listen: bool) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[IPV6]:PORT``; ``shown`` is the whole value, for the message."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{flag} {shown!r}: '[' without ']' (IPv6 goes as [ADDR]:PORT)")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{flag} {shown!r}: expected ':PORT' after ']'")
        port = rest[1:]
        if not rest or not port:
            raise ValueError(f"{flag} {shown!r} needs a port ([ADDR]:PORT)")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port:
            raise ValueError(f"{flag} {shown!r} needs a port (HOST:PORT)")
        # gRPC reads an unbracketed IPv6 address as a host without a port (and dials :443); a
        # listen address is split here, on the last colon, so there it is unambiguous.
        if ":" in host and not listen:
            raise ValueError(f"{flag} {shown!r}: put an IPv6 address in brackets, [ADDR]:PORT")
    if not port.isdigit():
        raise ValueError(f"{flag} {shown!r}: port {port!r} is not a number")
    low = 0 if listen else 1
    if not low <= int(port) <= 65535:
        raise ValueError(f"{flag} {shown!r}: port {int(port)} is out of range ({low}-65535)")
    if not host and not listen:
        raise ValueError(f"{flag} {shown!r} needs a host (HOST:PORT)")
    return host, int(port)


def split_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPV6]:PORT``) to bind; an empty host means every IPv4 address and
    port 0 any free port."""
    host, port = _host_port(listen.strip(), flag, listen, listen=True)
    return host or "0.0.0.0", port


def check_target(target: str, flag: str) -> str:
    """A gRPC peer address in one of the forms gRPC resolves: ``HOST:PORT``, ``[IPV6]:PORT``,
    ``dns:[//AUTHORITY/]HOST:PORT``, ``ipv4:ADDR:PORT[,...]``, ``ipv6:[ADDR]:PORT[,...]``,
    ``unix:PATH``, ``unix:///ABSOLUTE_PATH`` or ``unix-abstract:NAME``. Returned unchanged."""
    value = target.strip()
    if not value:
        raise ValueError(f"{flag} is empty (give {_FORMS})")
    scheme, colon, rest = value.partition(":")
    scheme = scheme.lower()
    if colon and scheme in ("unix", "unix-abstract"):
        if not rest.lstrip("/"):
            raise ValueError(f"{flag} {target!r} needs a socket path ({scheme}:PATH)")
        return value
    if colon and scheme == "dns":
        if rest.startswith("//"):  # dns://AUTHORITY/HOST:PORT (AUTHORITY usually empty)
            _authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"{flag} {target!r}: expected dns:///HOST:PORT")
        _host_port(rest, flag, target, listen=False)
        return value
    if colon and scheme in ("ipv4", "ipv6"):
        for address in rest.split(","):
            _host_port(address, flag, target, listen=False)
        return value
    if "://" in value:
        raise ValueError(f"{flag} {target!r}: unknown scheme {scheme!r} (give {_FORMS})")
    _host_port(value, flag, target, listen=False)
    return value


def check_bindable(host: str, port: int, flag: str, *, reuse_port: bool = False) -> None:
    """Bind (and release) ``host:port`` with the socket options gRPC's listener uses
    (SO_REUSEADDR; SO_REUSEPORT only when the server sets it, as the workers of ``--workers N``
    do), so a port another process holds is reported here in one line instead of by C-core's
    log. As gRPC does, this passes when any one of the addresses ``host`` resolves to binds.
    A race with another process binding in between remains possible; then gRPC's own error
    (and its log line) is what the user sees."""
    if port == 0:
        return  # any free port: the kernel always has one to give
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ValueError(f"{flag} {host}:{port}: cannot resolve {host!r}: {exc.strerror}") from None
    failure: OSError | None = None
    for family, kind, proto, _name, address in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
                return
            except OSError as exc:
                failure = failure or exc
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if failure is not None and failure.errno == errno.EADDRNOTAVAIL:
        raise ValueError(f"{flag} {shown}: {host!r} is not an address of this machine")
    reason = (failure.strerror if failure is not None else None) or "no address to bind"
    if failure is not None and failure.errno == errno.EADDRINUSE:
        reason = "address already in use (another process listens on this port)"
    raise Unavailable(f"{flag} {shown}: cannot listen: {reason}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now (the demo, the benchmarks and the tests
    start their servers on one; another process may still take it before they bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
