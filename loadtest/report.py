"""What a run reports: the summary table, the JSON document, the progress line, the latency plot
and the encoded HDR histogram."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.results import RunResult, Second

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def percentiles_ms(h: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean/min in milliseconds (zeros for an empty histogram)."""
    if h.get_total_count() == 0:
        return {k: 0.0 for k in ("p50", "p90", "p99", "p99.9", "max", "mean", "min")}
    out = {name: h.get_value_at_percentile(p) / 1000.0 for name, p in PERCENTILES}
    out["max"] = h.get_max_value() / 1000.0
    out["mean"] = round(h.get_mean_value() / 1000.0, 4)
    out["min"] = h.get_min_value() / 1000.0
    return out


def config_dict(result: RunResult) -> dict[str, Any]:
    s = result.settings
    keys = ["target", "protocol", "experiment", "mode", "duration", "warmup", "workers",
            "channels", "timeout", "users", "user_dist", "seed", "outcomes"]  # fmt: skip
    if s.mode == "open":
        keys += ["rate", "arrival", "concurrency", "drain"]
    else:
        keys += ["connections"]
    if s.user_dist == "zipf":
        keys.append("zipf_s")
    if s.protocol == "oip":
        keys.append("oip_input_name")
    if s.outcomes:
        keys += ["outcome_rate", "outcome_flip", "outcome_source"]
    cfg = {k: getattr(s, k) for k in keys}
    cfg["features"] = f"random:{s.features}" if s.features else f"holdout:{s.model_store}"
    return cfg


def to_json(result: RunResult) -> dict[str, Any]:
    """The whole report as one JSON-serializable document."""
    s = result.settings
    return {
        "run_id": s.run_id,
        "config": config_dict(result),
        "target_rate": s.rate if s.mode == "open" else None,
        "achieved_rate": round(result.achieved_rate, 3),
        "elapsed_s": round(result.elapsed, 4),
        "count": result.sent + result.unsent,
        "sent": result.sent,
        "ok": result.ok,
        "errors_total": sum(result.errors.values()),
        "errors": dict(sorted(result.errors.items())),
        "queued": result.queued,
        "unsent": result.unsent,
        "clamped": result.clamped,
        # open loop: from each request's intended send time; closed loop: from its send time.
        "latency_basis": "intended" if s.mode == "open" else "sent",
        "latency_ms": percentiles_ms(result.latency),
        "service_time_ms": percentiles_ms(result.service),
        "send_lag_ms": percentiles_ms(result.send_lag),
        "warmup": result.warmup,
        "outcomes": result.outcomes,
        "timeline": [dataclasses.asdict(sec) for sec in result.timeline],
    }


def _row(label: str, p: dict[str, float]) -> str:
    cells = "".join(f"{p[k]:>10.3f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
    return f"{label:<28}{cells}"


def summary_table(result: RunResult) -> str:
    s = result.settings
    lines = []
    if s.mode == "open":
        how = f"open loop, {s.arrival} arrivals, concurrency {s.concurrency}/worker"
    else:
        how = f"closed loop, {s.connections} connections"
    lines.append(
        f"abgate loadtest: {s.protocol} → {s.target} ({s.experiment}), {how}, "
        f"{s.workers} worker(s), {s.users} {s.user_dist} users, run {s.run_id}"
    )
    target = f"{s.rate:.1f} req/s" if s.mode == "open" else "— (closed loop)"
    lines.append(
        f"rate: target {target}, achieved {result.achieved_rate:.1f} req/s "
        f"({result.ok} ok in {result.elapsed:.2f} s, warm-up {s.warmup:g} s not counted)"
    )
    n_err = sum(result.errors.values())
    lines.append(
        f"requests: {result.sent + result.unsent} scheduled, {result.sent} sent, "
        f"{result.ok} ok, {n_err} errors"
        + (f", {result.queued} waited for a slot" if s.mode == "open" else "")
    )
    lines.append("")
    lines.append(f"{'ms':<28}" + "".join(f"{k:>10}" for k in ("p50", "p90", "p99", "p99.9", "max")))
    if s.mode == "open":
        lines.append(_row("latency (intended → answer)", percentiles_ms(result.latency)))
        lines.append(_row("service (sent → answer)", percentiles_ms(result.service)))
        lines.append(_row("send lag (intended → sent)", percentiles_ms(result.send_lag)))
    else:
        lines.append(_row("latency (sent → answer)", percentiles_ms(result.latency)))
    lines.append("")
    if n_err:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items(), key=lambda x: -x[1]))
        lines.append(f"errors by status: {errs}")
    else:
        lines.append("errors by status: none")
    w = result.warmup
    if w["errors"]:
        lines.append(f"warm-up errors: {', '.join(f'{k} {v}' for k, v in w['errors'].items())}")
    if s.outcomes:
        o = result.outcomes
        line = f"outcomes: {o['sent']} sent, {o['accepted']} accepted"
        if o["errors"]:
            line += " (failed: " + ", ".join(f"{k} {v}" for k, v in o["errors"].items()) + ")"
        lines.append(line)
    if result.clamped:
        lines.append(f"{result.clamped} latencies above 60 s were recorded as 60 s")
    for warning in warnings(result):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def warnings(result: RunResult) -> list[str]:
    """Signs that the numbers describe the load generator rather than the server."""
    s = result.settings
    out = []
    if s.mode == "open" and result.ok and result.achieved_rate < 0.9 * s.rate:
        out.append(
            f"achieved {result.achieved_rate:.0f} req/s is below 90% of the target "
            f"{s.rate:.0f}: the server (or this generator) could not keep up"
        )
    if s.mode == "open" and result.sent and result.send_lag.get_value_at_percentile(99) > 5000:
        out.append(
            "p99 send lag above 5 ms: requests left late (concurrency cap reached, or the "
            "generator's CPU is saturated); their wait counts in the latency"
        )
    return out


def progress_line(sec: Second) -> str:
    phase = " (warm-up)" if sec.warmup else ""
    return (
        f"[{sec.t:>4}s] sent {sec.total_sent} ok {sec.total_ok} errors {sec.total_errors} "
        f"| {sec.ok} ok/s | p99 {sec.p99_ms:.2f} ms{phase}"
    )


def write_histogram(result: RunResult, path: Path) -> None:
    """The measured latency histogram, HdrHistogram's compressed base64 encoding (µs);
    read back with ``HdrHistogram.decode(path.read_bytes().strip())``."""
    path.write_bytes(result.latency.encode() + b"\n")


def write_plot(result: RunResult, path: Path) -> None:
    """Latency by percentile (HDR style: x = 1/(1 − p), log scale) and latency over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter

    s = result.settings
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 8), constrained_layout=True)
    curves = [("latency (from intended send)" if s.mode == "open" else "latency", result.latency)]
    if s.mode == "open":
        curves.append(("service time (from actual send)", result.service))
    for label, h in curves:
        xs, ys = _percentile_curve(h)
        if xs:
            ax1.plot(xs, ys, label=label)
    ax1.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10_000, 100_000]
    names = ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
    top = max(result.latency.get_total_count(), 2)
    keep = [i for i, t in enumerate(ticks) if t <= top * 1.01]
    ax1.xaxis.set_major_locator(FixedLocator([ticks[i] for i in keep]))
    ax1.xaxis.set_major_formatter(FixedFormatter([names[i] for i in keep]))
    ax1.xaxis.set_minor_locator(FixedLocator([]))
    ax1.set_xlabel("percentile")
    ax1.set_ylabel("latency (ms)")
    rate = f"{s.rate:g} req/s {s.arrival}" if s.mode == "open" else f"closed, {s.connections} conn"
    ax1.set_title(
        f"{s.protocol} → {s.target} ({s.experiment}): {rate}, achieved "
        f"{result.achieved_rate:.0f} req/s, {result.ok} ok, {sum(result.errors.values())} errors"
    )
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper left")

    secs = result.timeline
    if secs:
        t = [x.t - 0.5 for x in secs]  # each second's answers, drawn at its middle
        ax2.plot(t, [x.p50_ms for x in secs], marker=".", label="p50")
        ax2.plot(t, [x.p99_ms for x in secs], marker=".", label="p99")
        ax2.plot(t, [x.max_ms for x in secs], marker=".", label="max", alpha=0.6)
        if s.warmup > 0:
            ax2.axvspan(0, s.warmup, color="grey", alpha=0.15, label="warm-up")
        ax2.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax2.yaxis.set_major_formatter(plain)
        ax2.yaxis.set_minor_formatter(plain)
        ax2.set_xlabel("seconds since start (each point: the answers completed in one second)")
        ax2.set_ylabel("latency (ms)")
        ax2.grid(True, which="both", alpha=0.3)
        rate_ax = ax2.twinx()
        full = [x for x in secs if not x.partial]
        rate_ax.plot(
            [x.t - 0.5 for x in full], [x.ok for x in full], color="black", linestyle="--",
            label="ok/s",
        )  # fmt: skip
        rate_ax.set_ylabel("ok answers per second")
        rate_ax.set_ylim(bottom=0)
        lines, labels = ax2.get_legend_handles_labels()
        lines2, labels2 = rate_ax.get_legend_handles_labels()
        ax2.legend(
            lines + lines2,
            labels + labels2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.18),
            ncol=5,
            fontsize="small",
        )
        ax2.set_title("latency over time")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _percentile_curve(h: HdrHistogram) -> tuple[list[float], list[float]]:
    total = h.get_total_count()
    if total == 0:
        return [], []
    xs: list[float] = []
    ys: list[float] = []
    for item in h.get_percentile_iterator(5):
        p = item.percentile_level_iterated_to / 100.0
        if p >= 1.0:
            break
        xs.append(1.0 / (1.0 - p))
        ys.append(item.value_iterated_to / 1000.0)
    # The maximum sits at the last percentile the count can resolve.
    xs.append(float(total))
    ys.append(h.get_max_value() / 1000.0)
    return xs, ys
