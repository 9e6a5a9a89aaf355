"""Prometheus metrics of one gateway process, read from live counters at scrape time (so the
request path pays nothing for them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.server import GatewayServer


class GatewayCollector(Collector):
    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        gid = self.server.gateway_id
        snap = self.server.dataplane.snapshot
        version = GaugeMetricFamily(
            "abgate_config_version", "Experiments config version being served", labels=["gateway"]
        )
        version.add_metric([gid], snap.version if snap is not None else 0)
        yield version
        mirror = self.server.mirror
        if mirror is not None:
            shadow = CounterMetricFamily(
                "abgate_shadow_rows",
                "Shadow rows by fate: mirrored (queued), run, shed (queue full), timed_out, "
                "failed (model raised), log_dropped (log queue over half full)",
                labels=["gateway", "result"],
            )
            for result, value in vars(mirror.counters).items():
                shadow.add_metric([gid, result], value)
            yield shadow
            queued_shadow = GaugeMetricFamily(
                "abgate_shadow_queued_rows", "Rows waiting for shadow models", labels=["gateway"]
            )
            queued_shadow.add_metric([gid], mirror.queued_rows)
            yield queued_shadow
        sub = self.server.subscriber
        if sub is not None:
            for name, text, value in (
                ("abgate_config_acks", "Config snapshots applied and ACKed", sub.acks),
                ("abgate_config_nacks", "Config snapshots rejected (NACKed)", sub.nacks),
                ("abgate_config_stream_connects", "Config stream dials", sub.connects),
            ):
                counter = CounterMetricFamily(name, text, labels=["gateway"])
                counter.add_metric([gid], value)
                yield counter
            connected = GaugeMetricFamily(
                "abgate_config_stream_connected",
                "1 while the config stream to the evaluator is up",
                labels=["gateway"],
            )
            connected.add_metric([gid], 1.0 if sub.connected else 0.0)
            yield connected
        writers = {"predictions": self.server.logwriter, "outcomes": self.server.outcome_writer}
        specs = (
            ("abgate_log_rows_written", "Log rows inserted into PostgreSQL", "written"),
            ("abgate_log_rows_duplicate", "Log rows already present (replays)", "duplicates"),
            ("abgate_log_rows_refused", "Rows refused because the log queue was full", "refused"),
            ("abgate_log_flush_failures", "Flushes that failed and will be retried",
             "failed_flushes"),
            ("abgate_log_rows_spooled", "Rows written to the disk spool", "spooled"),
            ("abgate_log_rows_replayed", "Rows replayed from the disk spool", "replayed"),
        )  # fmt: skip
        for name, text, attr in specs:
            fam = CounterMetricFamily(name, text, labels=["gateway", "table"])
            for table, w in writers.items():
                if w is not None:
                    fam.add_metric([gid, table], getattr(w.counters, attr))
            yield fam
        queued = GaugeMetricFamily(
            "abgate_log_rows_queued", "Rows waiting for PostgreSQL", labels=["gateway", "table"]
        )
        lag = GaugeMetricFamily(
            "abgate_log_lag_seconds", "Age of the oldest unwritten row", labels=["gateway", "table"]
        )
        for table, w in writers.items():
            if w is not None:
                queued.add_metric([gid, table], w.queued)
                lag.add_metric([gid, table], w.counters.lag_seconds())
        spool_bytes = GaugeMetricFamily(
            "abgate_log_spool_bytes", "Bytes in the disk spool", labels=["gateway", "table"]
        )
        for table, w in writers.items():
            if w is not None and w.spool is not None:
                spool_bytes.add_metric([gid, table], w.spool.size)
        yield queued
        yield lag
        yield spool_bytes
        unmatched = CounterMetricFamily(
            "abgate_outcomes_unmatched",
            "Outcomes whose prediction was not in the log when they were written",
            labels=["gateway"],
        )
        if self.server.outcome_writer is not None:
            unmatched.add_metric([gid], self.server.outcome_writer.counters.unmatched)
        yield unmatched


def start_metrics(server: GatewayServer, host: str, port: int) -> int:
    """Serve /metrics on host:port from a background thread; returns the bound port."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(server))
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    server.metrics_httpd = httpd
    return int(httpd.server_port)
