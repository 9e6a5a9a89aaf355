"""Prometheus metrics of the evaluator, read from its live state at scrape time (beside its gRPC
call metrics and the process collectors, see ``abgate.metrics_endpoint``). It reads the server
through ``EvaluatorView`` and imports no server."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from evaluator.aggregate import TickResult
    from evaluator.drift import DecayMeasure, DriftMeasure
    from evaluator.service import Publisher
    from evaluator.store import VersionRow


class EvaluatorView(Protocol):
    """What the collector reads at scrape time; ``evaluator.server.EvaluatorServer`` is one,
    and hands itself in when it starts its /metrics endpoint."""

    @property
    def publisher(self) -> Publisher: ...
    @property
    def latest(self) -> Mapping[str, VersionRow]: ...
    @property
    def verdicts(self) -> Mapping[str, tuple[dict[str, Any], dict[str, Any]]]: ...
    @property
    def last_tick(self) -> TickResult | None: ...
    @property
    def last_tick_at(self) -> float | None: ...
    @property
    def shadow_sums(self) -> Mapping[tuple[str, str], Mapping[str, float]]: ...
    @property
    def rows_aggregated(self) -> Mapping[str, int]: ...
    @property
    def ignored(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def decision_counts(self) -> Mapping[str, int]: ...
    @property
    def leader(self) -> bool: ...
    @property
    def drift(self) -> Mapping[tuple[str, str], Mapping[str, DriftMeasure]]: ...
    @property
    def feature_drift(self) -> Mapping[tuple[str, str], Mapping[str, DriftMeasure]]: ...
    @property
    def decay(self) -> Mapping[tuple[str, str], Mapping[str, DecayMeasure]]: ...
    def feature_names(self, experiment: str, arm: str) -> tuple[str, ...]: ...


class EvaluatorCollector(Collector):
    def __init__(self, server: EvaluatorView) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        srv = self.server
        pub = srv.publisher
        snapshot = GaugeMetricFamily(
            "abgate_evaluator_snapshot_version", "Config snapshot version being published"
        )
        snapshot.add_metric([], pub.version)
        yield snapshot
        acks = CounterMetricFamily(
            "abgate_evaluator_config_answers", "ACKs and NACKs received", labels=["answer"]
        )
        acks.add_metric(["ack"], pub.acks)
        acks.add_metric(["nack"], pub.nacks)
        yield acks
        gw_version = GaugeMetricFamily(
            "abgate_gateway_config_version",
            "Config version each gateway reports running (stale when below the snapshot)",
            labels=["node"],
        )
        gw_connected = GaugeMetricFamily(
            "abgate_gateway_connected",
            "1 while the gateway's config stream is open",
            labels=["node"],
        )
        for g in pub.gateways.values():
            gw_version.add_metric([g.node_id], g.version)
            gw_connected.add_metric([g.node_id], 1.0 if g.connected else 0.0)
        yield gw_version
        yield gw_connected
        decisions = CounterMetricFamily(
            "abgate_evaluator_decisions", "Decisions by action", labels=["action"]
        )
        for action, n in sorted(srv.decision_counts.items()):
            decisions.add_metric([action], n)
        yield decisions
        tick = GaugeMetricFamily(
            "abgate_evaluator_tick_seconds", "Duration of the last aggregation pass"
        )
        rows = CounterMetricFamily(
            "abgate_evaluator_rows_aggregated",
            "Log rows folded into the aggregates",
            labels=["table"],
        )
        last = GaugeMetricFamily(
            "abgate_evaluator_last_tick_timestamp_seconds",
            "Unix time the last evaluation tick completed (aggregation and every policy)",
        )
        if srv.last_tick is not None:
            tick.add_metric([], srv.last_tick.seconds)
        if srv.last_tick_at is not None:
            last.add_metric([], srv.last_tick_at)
        yield last
        rows.add_metric(["predictions"], srv.rows_aggregated["predictions"])
        rows.add_metric(["outcomes"], srv.rows_aggregated["outcomes"])
        yield tick
        yield rows
        ignored = CounterMetricFamily(
            "abgate_evaluator_rows_ignored",
            "Log rows read but not counted: duplicate_prediction (a request id already served),"
            " foreign_outcome (another client identity's), duplicate_outcome",
            labels=["experiment", "reason"],
        )
        for (experiment, reason), n in sorted(srv.ignored.items()):
            ignored.add_metric([experiment, reason], n)
        yield ignored
        p_value = GaugeMetricFamily(
            "abgate_experiment_p_value", "Current always-valid p-value", labels=["experiment"]
        )
        srm = GaugeMetricFamily(
            "abgate_experiment_srm_p_value",
            "Sequential sample-ratio-mismatch p-value, valid at every look (the evaluator pauses"
            " the experiment at <= 0.01: the split is not what was configured)",
            labels=["experiment"],
        )
        running = GaugeMetricFamily(
            "abgate_experiment_running", "1 while the experiment is running", labels=["experiment"]
        )
        # Archived experiments are kept for audit, not monitored: no series of theirs.
        archived = {name for name, row in srv.latest.items() if row.state.archived}
        for name, (verdict, statistics) in sorted(srv.verdicts.items()):
            if name in archived:
                continue
            if verdict.get("p_value") is not None:
                p_value.add_metric([name], verdict["p_value"])
            srm_p = statistics.get("srm", {}).get("p_value")
            if srm_p is not None:
                srm.add_metric([name], srm_p)
        rejecting = GaugeMetricFamily(
            "abgate_experiment_rejecting_gateways",
            "Connected gateways whose latest ACK rejects the experiment (they cannot serve it;"
            " the evaluator pauses it)",
            labels=["experiment"],
        )
        for name, row in sorted(srv.latest.items()):
            if name in archived:
                continue
            running.add_metric([name], 1.0 if row.state.status == "running" else 0.0)
            rejecting.add_metric([name], len(pub.rejections_of(name)))
        yield p_value
        yield srm
        yield running
        yield rejecting
        leader = GaugeMetricFamily(
            "abgate_evaluator_leader",
            "1 while this evaluator holds the leader lock (aggregates and decides)",
        )
        leader.add_metric([], 1.0 if srv.leader else 0.0)
        yield leader
        pairs = CounterMetricFamily(
            "abgate_shadow_pairs",
            "Requests answered by both the served arm and the shadow (compared pairwise)",
            labels=["experiment", "shadow"],
        )
        agreements = CounterMetricFamily(
            "abgate_shadow_agreements",
            "Pairs where the shadow's label equals the served one (÷ pairs = agreement rate)",
            labels=["experiment", "shadow"],
        )
        for (exp, shadow), sums in sorted(srv.shadow_sums.items()):
            pairs.add_metric([exp, shadow], sums["pairs"])
            agreements.add_metric([exp, shadow], sums["agree"])
        yield pairs
        yield agreements
        drift_psi = GaugeMetricFamily(
            "abgate_drift_psi",
            "Population stability index of the arm's rows in the rolling window (the last"
            " --drift-window seconds) against its reference window, per kind (score: 10 bins of"
            " the positive-class score; class: predicted labels); levels:"
            " abgate_drift_psi_warn/_act",
            labels=["experiment", "arm", "kind"],
        )
        drift_p = GaugeMetricFamily(
            "abgate_drift_p_value",
            "Anytime-valid p-value of 'current rows fall into the bins with the reference's"
            " shares' (evaluator.stats.sequential_drift), valid at every look",
            labels=["experiment", "arm", "kind"],
        )
        for (exp, arm), measures in sorted(srv.drift.items()):
            for kind, m in sorted(measures.items()):
                drift_psi.add_metric([exp, arm, kind], m.psi)
                drift_p.add_metric([exp, arm, kind], m.p_value)
        yield drift_psi
        yield drift_p
        feature_psi = GaugeMetricFamily(
            "abgate_feature_drift_psi",
            "Population stability index of a captured feature's rows in the rolling window"
            " against the arm's reference window (bins: the reference's deciles); levels:"
            " abgate_drift_psi_warn/_act; name: the model's name of the feature",
            labels=["experiment", "arm", "feature", "name"],
        )
        feature_p = GaugeMetricFamily(
            "abgate_feature_drift_p_value",
            "Anytime-valid p-value of 'this feature's current rows fall into the bins with the"
            " reference's shares', Bonferroni-adjusted over the arm's features",
            labels=["experiment", "arm", "feature", "name"],
        )
        for (exp, arm), measures in sorted(srv.feature_drift.items()):
            names = srv.feature_names(exp, arm)
            for feature, m in sorted(measures.items()):
                i = int(feature)
                labels = [exp, arm, feature, names[i] if i < len(names) else ""]
                feature_psi.add_metric(labels, m.psi)
                feature_p.add_metric(labels, m.p_value)
        yield feature_psi
        yield feature_p
        decay_rate = GaugeMetricFamily(
            "abgate_decay_rate",
            "Arm's accuracy (outcome equals the predicted label) or outcome rate (share of"
            " positive outcomes), in its reference, current (every labelled row after the"
            " reference) and window (those of the rolling window) labelled rows",
            labels=["experiment", "arm", "kind", "window"],
        )
        decay_p = GaugeMetricFamily(
            "abgate_decay_p_value",
            "Anytime-valid p-value of 'the current labelled rows have the reference's accuracy"
            " (or outcome rate)' (evaluator.stats.sequential_drift on 2 bins)",
            labels=["experiment", "arm", "kind"],
        )
        for (exp, arm), decays in sorted(srv.decay.items()):
            for kind, d in sorted(decays.items()):
                for window, rate in (
                    ("reference", d.reference_rate),
                    ("current", d.current_rate),
                    ("window", d.window_rate),
                ):
                    if not math.isnan(rate):
                        decay_rate.add_metric([exp, arm, kind, window], rate)
                decay_p.add_metric([exp, arm, kind], d.p_value)
        yield decay_rate
        yield decay_p
        # Each experiment's drift levels (DriftThresholds), which the alert rules compare the
        # PSI and p-value gauges against (so an experiment's own levels alert, not fixed ones).
        psi_warn = GaugeMetricFamily(
            "abgate_drift_psi_warn",
            "PSI at which this experiment's drift warns (default 0.1)",
            labels=["experiment"],
        )
        psi_act = GaugeMetricFamily(
            "abgate_drift_psi_act",
            "PSI at which this experiment's drift acts (default 0.25)",
            labels=["experiment"],
        )
        alpha = GaugeMetricFamily(
            "abgate_drift_alpha",
            "Level of this experiment's anytime-valid drift and decay tests (default 0.01)",
            labels=["experiment"],
        )
        for name, row in sorted(srv.latest.items()):
            if not row.state.archived:
                psi_warn.add_metric([name], row.state.psi_warn)
                psi_act.add_metric([name], row.state.psi_act)
                alpha.add_metric([name], row.state.drift_alpha)
        yield psi_warn
        yield psi_act
        yield alpha
