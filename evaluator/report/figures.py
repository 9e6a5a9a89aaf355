"""The report's figures, drawn with matplotlib's object API only (no pyplot state, nothing shared
between reports or threads): arm shares against the split, the primary metric with its confidence
sequence, latency, shadow agreement, drift and decay over time.

Each ``fig_*`` draws loaded results and their series (``evaluator.results``) into a new figure
for the HTML page, or into a sub-figure of a PDF page (``into``); ``render`` places them.
matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluator.report.tables import _duration, drift_keys
from evaluator.results import (
    LATENCY_BINS_PER_OCTAVE,
    ExperimentResults,
    MetricSeries,
    histogram_quantile,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import FigureBase

# The histogram panel shows LATENCY_BINS_PER_OCTAVE bins merged by this (4 bins per octave); the
# tail panel shows them as they are.
_DISPLAY_MERGE = 8
# Arms and shadows avoid the decision markers' colours (green, red, black, grey, cyan).
_ARM_COLORS = ("C0", "C1", "C4", "C5", "C6", "C8")
_SHADOW_COLORS = ("C6", "C5", "C8", "C4")
_ACTION_STYLE = {
    "create": ("#000000", ":"),
    "promote": ("#2ca02c", "-"),
    "advance": ("#17becf", "-."),
    "reweight": ("#555555", (0, (1, 3))),
    "keep": ("#000000", "-"),
    "stop": ("#000000", "--"),
    "rollback": ("#d62728", "-"),
    "pause": ("#7f7f7f", "--"),
    "resume": ("#7f7f7f", "-."),
    "archive": ("#7f7f7f", (0, (6, 2))),
    "unarchive": ("#7f7f7f", (0, (1, 1))),
}
_METRIC_AXIS = {"accuracy": "accuracy", "outcome": "mean outcome", "score": "mean score"}


def _times(epochs: np.ndarray) -> np.ndarray:
    """Epoch seconds as datetime64 (UTC) for matplotlib's date axis."""
    return (np.asarray(epochs) * 1000.0).astype("datetime64[ms]")


def _date_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))


def _no_data(ax: Axes, text: str = "no data yet") -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=14,
        color="0.45",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(height: float, into: FigureBase | None) -> FigureBase:
    """``into`` (a PDF page's sub-figure) or a new 10-inch-wide figure for the HTML page."""
    from matplotlib.figure import Figure

    return into if into is not None else Figure(figsize=(10, height), layout="constrained")


def _empty(title: str, into: FigureBase | None, text: str = "no data yet") -> FigureBase:
    """A short panel saying there is nothing to plot yet."""
    fig = _figure(2.0, into)
    fig.suptitle(title)
    _no_data(fig.subplots(), text)
    return fig


def _arm_color(data: ExperimentResults, arm: str) -> str:
    return _ARM_COLORS[data.arms.index(arm) % len(_ARM_COLORS)]


def _split_changes(data: ExperimentResults) -> list[float]:
    """When the configured split changed (the first version included): the shares since then
    are what the evaluator's sample-ratio check compares against that split."""
    out = [data.versions[0].created_at]
    for prev, v in zip(data.versions, data.versions[1:], strict=False):
        if v.state.weights != prev.state.weights:
            out.append(v.created_at)
    return out


def fig_shares(data: ExperimentResults, into: FigureBase | None = None) -> FigureBase:
    title = f"Arm shares vs the configured split ({_duration(data.bucket_s)} buckets)"
    if not data.has_traffic:
        return _empty(title, into)
    fig = _figure(5.2, into)
    ax, ax_rate = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    fig.suptitle(title)
    edges = data.edges()
    centers = _times((edges[:-1] + edges[1:]) / 2)
    ends = _times(edges[1:])
    zeros = np.zeros(data.n_buckets, np.int64)
    total = sum(data.served.values(), zeros)
    # A bucket belongs to the split in force at its start; cumulative shares restart there.
    segment = np.searchsorted(np.array(_split_changes(data)), edges[:-1], side="right")
    k = len(data.arms)
    covered = data.covered()

    def rate_of(rows: np.ndarray) -> np.ndarray:
        # A sliver of a bucket (the data's last moment) would show a meaningless rate.
        ok = covered >= 0.05 * data.bucket_s
        return np.divide(rows, covered, out=np.full(len(rows), np.nan), where=ok)

    for j, arm in enumerate(data.arms):
        color = _arm_color(data, arm)
        rows = data.served.get(arm, zeros)
        share = np.divide(100.0 * rows, total, out=np.full(data.n_buckets, np.nan), where=total > 0)
        share[covered < 0.05 * data.bucket_s] = np.nan
        ax.plot(centers, share, ".", color=color, ms=4, alpha=0.45)
        for g in np.unique(segment):
            sel = segment == g
            cum_all, cum_arm = np.cumsum(total[sel]), np.cumsum(rows[sel])
            since = np.divide(
                100.0 * cum_arm, cum_all, out=np.full(int(sel.sum()), np.nan), where=cum_all > 0
            )
            ax.plot(
                ends[sel],
                since,
                "-",
                color=color,
                lw=2.4,
                zorder=2,
                label=f"{arm} since the split changed" if g == segment[0] else None,
            )
        # The split in force: one step per version. Dashes of the arms interleave, so equal
        # weights still show every arm's colour.
        xs = [v.created_at for v in data.versions] + [float(edges[-1])]
        ys = [v.state.weights.get(arm, 0.0) for v in data.versions]
        ax.step(
            _times(np.array(xs)),
            [*ys, ys[-1]],
            where="post",
            color=color,
            lw=1.3,
            ls=(4 * j, (4, 4 * (k - 1))),
            zorder=3,
            label=f"{arm} configured",
        )
        ax_rate.plot(centers, rate_of(rows), "-", color=color, lw=1, label=arm)
    ax.plot([], [], ".", color="0.4", label="share per bucket")
    ax.set_ylim(-4, 104)
    ax.set_ylabel("share of requests (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax_rate.set_ylabel("requests / s")
    ax_rate.set_ylim(bottom=0)
    ax_rate.grid(alpha=0.3)
    ax_rate.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax_rate.set_xlabel("time (UTC)")
    _date_axis(ax_rate)
    return fig


def _decision_lines(data: ExperimentResults, axes: Iterable[Axes], legend_ax: Axes) -> None:
    """A vertical line per decision that is not "continue", styled by action; one legend entry
    per action and source."""
    labelled: set[tuple[str, str]] = set()
    for d in data.markers:
        color, ls = _ACTION_STYLE.get(d["action"], ("#444444", (0, (3, 2, 1, 2))))
        when = _times(np.array([d["ts"]]))[0]
        for ax in axes:
            ax.axvline(when, color=color, ls=ls, lw=1.3, alpha=0.85)
        key = (d["action"], d["source"])
        if key not in labelled:
            labelled.add(key)
            legend_ax.plot([], [], color=color, ls=ls, lw=1.3, label=f"{key[0]} ({key[1]})")


def fig_metric(
    data: ExperimentResults, series: MetricSeries, into: FigureBase | None = None
) -> FigureBase:
    s = data.state
    title = (
        f"Primary metric: {s.primary_metric} (cumulative, at the end of each "
        f"{_duration(data.bucket_s)} bucket)"
    )
    if not any(int(n[-1]) for n in series.n.values()):
        return _empty(
            title, into, "no data yet" if s.primary_metric == "score" else "no outcomes yet"
        )
    fig = _figure(6.2, into)
    ax, ax_eff = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.15])
    fig.suptitle(title)
    ends = _times(series.ends)
    mean_level = f"{100.0 * (1.0 - series.mean_alpha):.4g}% always-valid CS"
    for k, arm in enumerate(data.arms):
        color = _arm_color(data, arm)
        ax.plot(
            ends, series.mean[arm], "-", color=color, lw=1.6,
            label=f"{arm} (n={int(series.n[arm][-1]):,})",
        )  # fmt: skip
        if arm in series.mean_lo:
            ax.fill_between(
                ends, series.mean_lo[arm], series.mean_hi[arm], color=color, alpha=0.15, lw=0,
                label=mean_level if k == 0 else None,
            )  # fmt: skip
    ax.set_ylabel(_METRIC_AXIS[s.primary_metric])
    ax.grid(alpha=0.3)
    level = 100.0 * (1.0 - series.alpha)
    ci_name = f"{level:.4g}% always-valid CI" + (
        f" (α/{len(data.arms) - 1} each)" if len(data.arms) > 2 else ""
    )
    for j, t in enumerate(data.arms[1:]):
        color = _arm_color(data, t)
        ax_eff.plot(ends, series.effect[t], "-", color=color, lw=1.6, label=f"{t} − {data.arms[0]}")
        ax_eff.fill_between(
            ends,
            series.lo[t],
            series.hi[t],
            color=color,
            alpha=0.2,
            lw=0,
            label=ci_name if j == 0 else None,
        )
    ax_eff.axhline(0.0, color="black", lw=0.9)
    if s.min_effect > 0:
        ax_eff.axhline(
            s.min_effect, color="#2ca02c", ls="--", lw=1, label=f"min effect {s.min_effect:g}"
        )
    _clip_effect_axis(ax_eff, series, s.min_effect)
    ax_eff.set_ylabel("effect (treatment − control)")
    if s.kind == "ab" and s.min_samples > 0:
        # The policy decides nothing before every arm has min_samples: shade that wait.
        fewest = np.min(np.vstack([series.n[a] for a in data.arms]), axis=0)
        ready = np.flatnonzero(fewest >= s.min_samples)
        until = series.ends[ready[0]] if ready.size else series.ends[-1]
        start = _times(np.array([data.t0, until]))
        for a in (ax, ax_eff):
            a.axvspan(start[0], start[1], color="0.5", alpha=0.12, lw=0)
        ax_eff.fill_between(
            [], [], color="0.5", alpha=0.12, label=f"< {s.min_samples:,} samples per arm"
        )
    ax_eff.grid(alpha=0.3)
    ax_eff.set_xlabel("time (UTC)")
    _decision_lines(data, (ax, ax_eff), ax)
    for a in (ax, ax_eff):
        a.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _date_axis(ax_eff)
    return fig


def _clip_effect_axis(ax: Axes, series: MetricSeries, min_effect: float) -> None:
    """Early CIs are huge: scale the axis to the effects and the later CIs, not the first."""
    values = [0.0, min_effect]
    for t, e in series.effect.items():
        values += [float(x) for x in e[np.isfinite(e)]]
        lo, hi = series.lo[t], series.hi[t]
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            width = hi[ok] - lo[ok]
            # CIs no wider than 3x the final one: the early, uninformative ones go off-axis.
            keep = width <= 3.0 * width[-1]
            values += [float(x) for x in lo[ok][keep]] + [float(x) for x in hi[ok][keep]]
    lo_v, hi_v = min(values), max(values)
    pad = 0.08 * (hi_v - lo_v or 1.0)
    ax.set_ylim(lo_v - pad, hi_v + pad)


def _ms_formatter(value: float, _pos: int) -> str:
    return f"{value:g}"


def fig_latency(data: ExperimentResults, into: FigureBase | None = None) -> FigureBase:
    from matplotlib.ticker import FuncFormatter

    title = "Latency per arm (served rows; gateway time per request)"
    arms = [a for a in data.arms if data.latency.get(a)]
    if not arms:
        return _empty(title, into)
    fig = _figure(4.6, into)
    ax_hist, ax_tail = fig.subplots(1, 2)
    fig.suptitle(title)
    k = LATENCY_BINS_PER_OCTAVE
    limit_ms = data.state.guardrails.max_p99_latency_ms
    for arm in arms:
        bins = data.latency[arm]
        total = sum(bins.values())
        color = _arm_color(data, arm)
        p50, p99 = histogram_quantile(bins, 0.5) / 1000, histogram_quantile(bins, 0.99) / 1000
        label = f"{arm}: p50 {p50:.3g} ms, p99 {p99:.3g} ms (n={total:,})"
        # Histogram at 4 bins per octave: share of requests per bin.
        coarse: dict[int, int] = {}
        for b, n in bins.items():
            coarse[b // _DISPLAY_MERGE] = coarse.get(b // _DISPLAY_MERGE, 0) + n
        lo, hi = min(coarse), max(coarse)
        values = np.array([coarse.get(b, 0) for b in range(lo, hi + 1)]) / total
        edges = 2.0 ** (np.arange(lo, hi + 2) * _DISPLAY_MERGE / k) / 1000.0
        ax_hist.stairs(100.0 * values, edges, color=color, lw=1.6, label=label)
        # Tail: share of requests slower than x, at every fine bin edge.
        keys = np.array(sorted(bins))
        counts = np.array([bins[b] for b in keys])
        slower = 1.0 - np.cumsum(counts) / total
        xs = 2.0 ** ((keys + 1) / k) / 1000.0
        ax_tail.step(
            np.r_[2.0 ** (keys[0] / k) / 1000.0, xs],
            np.r_[1.0, slower],
            where="post",
            color=color,
            lw=1.6,
            label=label,
        )
    ax_tail.axhline(0.01, color="0.3", ls=":", lw=1, label="1 % (p99)")
    if limit_ms > 0:
        for a in (ax_hist, ax_tail):
            a.axvline(
                limit_ms, color="#d62728", ls="--", lw=1, label=f"guardrail p99 ≤ {limit_ms:g} ms"
            )
    for a in (ax_hist, ax_tail):
        a.set_xscale("log")
        a.xaxis.set_major_formatter(FuncFormatter(_ms_formatter))
        a.set_xlabel("latency (ms, log scale)")
        a.grid(alpha=0.3, which="both")
    ax_hist.set_ylabel("requests per bin (%)")
    ax_hist.set_title("distribution", fontsize=10)
    ax_hist.set_ylim(0, ax_hist.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
    ax_hist.legend(fontsize=8, loc="upper right")
    ax_tail.set_yscale("log")
    ax_tail.set_ylim(max(0.5 / max(sum(data.latency[a].values()) for a in arms), 1e-5), 1.5)
    ax_tail.set_ylabel("share of requests slower than x")
    ax_tail.set_title("tail (1 − CDF)", fontsize=10)
    ax_tail.legend(fontsize=8, loc="lower left")
    return fig


def fig_shadows(data: ExperimentResults, into: FigureBase | None = None) -> FigureBase:
    from evaluator.stats import wilson_interval

    title = (
        f"Shadow agreement with the served prediction (same label), per "
        f"{_duration(data.bucket_s)} bucket and cumulative"
    )
    if not any(int(p[:, 0].sum()) for p in data.shadow_pairs.values()):
        return _empty(title, into)
    fig = _figure(4.4, into)
    ax = fig.subplots()
    fig.suptitle(title)
    edges = data.edges()
    centers = _times((edges[:-1] + edges[1:]) / 2)
    ends = _times(edges[1:])
    for i, name in enumerate(data.shadows):
        p = data.shadow_pairs.get(name)
        if p is None or not p[:, 0].sum():
            continue
        color = _SHADOW_COLORS[i % len(_SHADOW_COLORS)]
        rate = np.divide(100.0 * p[:, 1], p[:, 0], out=np.full(len(p), np.nan), where=p[:, 0] > 0)
        ax.plot(centers, rate, ".", color=color, ms=5, alpha=0.55, label=f"{name} per bucket")
        cp, ca = np.cumsum(p[:, 0]), np.cumsum(p[:, 1])
        has = cp > 0
        cum = np.divide(100.0 * ca, cp, out=np.full(len(p), np.nan), where=has)
        band = np.array(
            [
                wilson_interval(int(a), int(n)) if n else (np.nan, np.nan)
                for a, n in zip(ca, cp, strict=True)
            ]
        )
        ax.plot(
            ends, cum, "-", color=color, lw=1.8, label=f"{name} cumulative ({int(cp[-1]):,} pairs)"
        )
        ax.fill_between(
            ends,
            100 * band[:, 0],
            100 * band[:, 1],
            color=color,
            alpha=0.2,
            lw=0,
            label="95% Wilson CI",
        )
    ax.set_ylim(-4, 104)
    ax.set_ylabel("agreement (%)")
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    _decision_lines(data, (ax,), ax)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _date_axis(ax)
    return fig


_MEASURE_STYLE = {"score": "-", "class": "--"}
_FEATURE_STYLES = (":", "-.", (0, (5, 1, 1, 1)))


def fig_drift(data: ExperimentResults, into: FigureBase | None = None) -> FigureBase:
    """PSI of each shown drift series against the warn and act lines, and the anytime-valid
    p-values of every shown drift and decay test, over time (drift_history); the lines are the
    experiment's levels as they stand (DriftThresholds)."""
    state = data.state
    title = "Drift and decay over time (the evaluator's measures, the last of each bucket)"
    keys = drift_keys(data)
    if not keys:
        return _empty(title, into, "no drift measures yet")
    fig = _figure(6.0, into)
    fig.suptitle(title)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    features = 0
    for arm, measure in keys:
        points = data.drift[(arm, measure)]
        t = _times(np.array([p.t for p in points]))
        color = _arm_color(data, arm) if arm in data.arms else "0.4"
        if measure.startswith("decay:"):
            style: Any = (0, (1, 1))
        elif measure.startswith("feature:"):
            style = _FEATURE_STYLES[features % len(_FEATURE_STYLES)]
            features += 1
        else:
            style = _MEASURE_STYLE[measure]
        label = f"{arm} {data.measure_label(arm, measure)}"
        if not measure.startswith("decay:"):
            psi = np.array([np.nan if p.psi is None else p.psi for p in points])
            top.plot(t, psi, linestyle=style, marker=".", color=color, label=label)
        p_values = np.array([max(p.p_value, 1e-16) for p in points])
        bottom.plot(t, p_values, linestyle=style, marker=".", color=color, label=label)
    top.axhline(state.psi_warn, color="#ff7f0e", lw=1, ls="--", label=f"warn ({state.psi_warn:g})")
    top.axhline(state.psi_act, color="#d62728", lw=1, ls="--", label=f"act ({state.psi_act:g})")
    top.set_ylabel("PSI")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    alpha = state.drift_alpha
    bottom.axhline(alpha, color="#d62728", lw=1, ls="--", label=f"α = {alpha:g}")
    bottom.set_yscale("log")
    bottom.set_ylim(top=1.5)
    bottom.set_ylabel("p-value (anytime-valid)")
    bottom.set_xlabel("time (UTC)")
    bottom.grid(alpha=0.3)
    _decision_lines(data, (top, bottom), bottom)
    bottom.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _date_axis(bottom)
    return fig


@dataclass
class Figures:
    """The HTML page's figures (the PDF draws them again, into its A4 pages)."""

    shares: FigureBase
    metric: FigureBase
    latency: FigureBase
    shadows: FigureBase | None
    drift: FigureBase | None


def build_figures(data: ExperimentResults, series: MetricSeries) -> Figures:
    return Figures(
        shares=fig_shares(data),
        metric=fig_metric(data, series),
        latency=fig_latency(data),
        shadows=fig_shadows(data) if data.shadows else None,
        drift=fig_drift(data) if data.drift else None,
    )
