"""One small uvicorn wrapper for the HTTP servers beside gRPC: the evaluator's HTTP/JSON API
and dashboard (``evaluator.http``) and the gateway's OIP REST (``gateway.oip_http``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from abgate.errors import Unavailable


# -- serving ------------------------------------------------------------------------------------
class _Server(uvicorn.Server):
    """uvicorn on the evaluator's loop: the evaluator handles SIGTERM/SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class HttpServer:
    server: _Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


async def serve_http(
    app: Any,
    host: str,
    port: int,
    *,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
    reuse_port: bool = False,
) -> HttpServer:
    """``app`` on host:port (0: any free port) until ``stop``; Unavailable when the address is
    taken. ``tls``: (certificate, key) PEM files; ``client_ca``: require client certificates;
    ``reuse_port``: SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # worker processes share the port, as their gRPC listeners do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port} for HTTP: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        loop="none",
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        ssl_ca_certs=client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        limit_max_requests=None,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise Unavailable(f"the HTTP server on {host}:{port} stopped at start")
        await asyncio.sleep(0.01)
    return HttpServer(server, task, int(sock.getsockname()[1]))
