"""One process's Prometheus endpoint: the collectors a server hands in, served on /metrics from
a background thread beside the standard process, platform and GC collectors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.registry import Collector

from abgate.errors import Unavailable


def serve_collectors(collectors: Iterable[Collector], host: str, port: int) -> Any:
    """Serve ``collectors`` on /metrics at host:port from a background thread, with this
    process's ``process_*`` (CPU, memory, open fds, start time: each worker of ``--workers``
    reports itself), ``python_info`` and ``python_gc_*``; the HTTP server (``server_port``,
    ``shutdown()``)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    try:
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # the CLI checks first; this is a port taken since
        raise Unavailable(
            f"--metrics-listen {host}:{port}: cannot listen: {exc.strerror}"
        ) from None
    return httpd
