"""The report's pages: the PDF's text pages (title, decisions), the self-contained HTML page
(every figure inlined as a PNG) and ``write_report``, which writes both.

``write_report`` takes loaded results (``evaluator.results``), derives their series, has
``figures`` draw them and sets the tables of ``tables`` and the captions around them.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator.report.figures import (
    Figures,
    build_figures,
    fig_drift,
    fig_latency,
    fig_metric,
    fig_shadows,
    fig_shares,
)
from evaluator.report.tables import (
    ARM_COLUMNS,
    DRIFT_COLUMNS,
    SHADOW_COLUMNS,
    _decision_table,
    _duration,
    _when,
    arm_rows,
    definition_rows,
    drift_rows,
    shadow_rows,
    verdict_rows,
)
from evaluator.results import ExperimentResults, MetricSeries, metric_series

if TYPE_CHECKING:
    from matplotlib.figure import Figure, FigureBase

PDF_DECISION_LINES = 24  # rows on the PDF's decision page (recommendations wrap)
_A4_LANDSCAPE = (11.69, 8.27)
_METRIC_LABEL = {
    "accuracy": "accuracy (outcome = predicted label)",
    "outcome": "mean outcome value",
    "score": "mean positive-class score",
}
_METRIC_SOURCE = {
    "accuracy": ", over predictions paired with their outcome (a pair counts from when the later"
    " of the two was logged)",
    "outcome": ", over predictions paired with their outcome (a pair counts from when the later"
    " of the two was logged)",
    "score": ", over successful predictions",
}


# -- text pages ---------------------------------------------------------------------------------
def _text_page(title: str, blocks: Sequence[tuple[str, Sequence[str]]]) -> Figure:
    """A PDF page of monospaced text (A4 landscape-ish width as the figures)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=_A4_LANDSCAPE)
    fig.text(0.05, 0.95, title, fontsize=16, weight="bold", va="top")
    y = 0.89
    for heading, lines in blocks:
        if y < 0.08:
            break
        fig.text(0.05, y, heading, fontsize=11, weight="bold", va="top")
        y -= 0.032
        for line in lines:
            if y < 0.05:
                fig.text(0.05, y, "…", fontsize=8, family="monospace", va="top")
                break
            fig.text(0.06, y, line, fontsize=8, family="monospace", va="top")
            y -= 0.021
        y -= 0.015
    return fig


def _table_lines(
    columns: Sequence[str], rows: Sequence[Sequence[str]], last_width: int = 0
) -> list[str]:
    """A monospaced table; with ``last_width`` the last column wraps onto further lines."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    if last_width:
        widths[-1] = min(widths[-1], last_width)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*columns).rstrip()]
    for r in rows:
        tail = textwrap.wrap(r[-1], width=last_width) if last_width else [r[-1]]
        lines.append(fmt.format(*r[:-1], tail[0] if tail else "").rstrip())
        indent = sum(widths[:-1]) + 2 * (len(widths) - 1)
        lines += [" " * indent + t for t in tail[1:]]
    return lines


def _wrap(label: str, value: str, width: int = 120) -> list[str]:
    head = f"{label:<22}"
    return textwrap.wrap(value, width=width, initial_indent=head, subsequent_indent=" " * 22) or [
        head
    ]


def title_page(data: ExperimentResults, series: MetricSeries) -> Figure:
    blocks: list[tuple[str, Sequence[str]]] = [
        ("Experiment", [x for k, v in definition_rows(data) for x in _wrap(k, v)]),
        ("Current verdict", [x for k, v in verdict_rows(data) for x in _wrap(k, v)]),
        ("Arms now (all data)", _table_lines(ARM_COLUMNS, arm_rows(data, series))),
    ]
    if data.shadows:
        blocks.append(("Shadows", _table_lines(SHADOW_COLUMNS, shadow_rows(data))))
    blocks.append(
        (
            "Report",
            [
                f"generated {_when(data.generated_at)}; data {_when(data.t0)} .. "
                f"{_when(data.t1)}, buckets of {_duration(data.bucket_s)}",
            ],
        )
    )
    return _text_page(f"abgate experiment report: {data.name}", blocks)


def decision_page(data: ExperimentResults) -> Figure:
    rows = _decision_table(data)
    # On paper: every decision that is not "continue", and the latest ones to fill the page.
    if len(rows) > PDF_DECISION_LINES:
        keep = {i for i, d in enumerate(data.decisions) if d["action"] != "continue"}
        keep |= set(range(len(rows) - PDF_DECISION_LINES // 2, len(rows)))
        rows = [r for i, r in enumerate(rows) if i in keep][-PDF_DECISION_LINES:]
    columns = ("time (UTC)", "action", "source", "versions", "recommendation")
    lines = _table_lines(columns, rows, last_width=100)
    note = (
        f"{data.decisions_total:,} decisions in all; listed: {len(rows)}"
        if data.decisions_total
        else "no decisions yet"
    )
    return _text_page(f"Decisions: {data.name}", [(note, lines)])


# -- output -------------------------------------------------------------------------------------
def captions(data: ExperimentResults) -> dict[str, str]:
    """What each figure shows, under it on the HTML page and on its PDF page."""
    metric = data.state.primary_metric
    return {
        "shares": "Dots: each arm's share of the requests in a bucket. Solid: its share of all "
        "requests since the split last changed (what the sample-ratio check compares). Dashed: "
        "the split in force, from the experiment's versions. Below: requests per second.",
        "metric": f"Per arm, cumulative {_METRIC_LABEL[metric]}{_METRIC_SOURCE[metric]}. Below: "
        "the effect with its always-valid confidence sequence (evaluator.stats.sequential_test), "
        "valid at every look at once; grey: before every arm had the minimum samples. Vertical "
        "lines: decisions.",
        "latency": "Left: share of requests per latency bin (4 bins per octave). Right: share of "
        "requests slower than x; each curve crosses the dotted 1 % line at its p99. p50 and p99 "
        "come from a 32-bins-per-octave histogram computed in SQL over every row (within about "
        "1 %).",
        "drift": "Top: the population stability index (PSI) of each arm's score and "
        "predicted-class distribution, and of the captured features with the highest PSI, "
        "against its reference window; dashed: the warn and act levels. Bottom: the p-values "
        "of the anytime-valid two-sample tests (drift) and of the decay test on accuracy or "
        "outcome rate (dotted), valid at every look; a series crossing the α line rejected. "
        "Kept by the evaluator every --drift-history-interval (drift_history).",
        "shadows": "Agreement: the shadow and the served prediction of the same request have the "
        "same label. Dots per bucket, the line cumulative with a 95 % Wilson interval. The table "
        "is the evaluator's pairwise comparison (shadow_stats).",
    }


def _pdf_page(draw: Callable[[FigureBase], object], caption: str) -> Figure:
    """An A4 landscape page: the figure drawn into its upper part, the caption below."""
    from matplotlib.figure import Figure

    page = Figure(figsize=_A4_LANDSCAPE, layout="constrained")
    subs: Any = page.subfigures(2, 1, height_ratios=[7.0, 1.0])
    top, bottom = subs
    draw(top)
    text = "\n".join(textwrap.wrap(caption, 150))
    bottom.text(0.03, 0.85, text, va="top", fontsize=9, color="0.3")
    return page


def png_base64(fig: FigureBase, dpi: int = 100) -> str:
    buf = io.BytesIO()
    root = fig.get_figure(root=True)
    assert root is not None
    root.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}table.kv th{width:12em}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
tr.continue td{color:#777}
"""


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _html_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{html.escape(classes[i]) if i < len(classes) else ""}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(fig: FigureBase, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'


def render_html(data: ExperimentResults, series: MetricSeries, figs: Figures) -> str:
    name = html.escape(data.name)
    decisions = _decision_table(data)
    shown = (
        f"latest {len(decisions)} of {data.decisions_total:,}"
        if data.decisions_total > len(decisions)
        else f"{len(decisions)}"
    )
    notes = {k: f'<p class="note">{html.escape(v)}</p>' for k, v in captions(data).items()}
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>abgate report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>abgate experiment report: {name}</h1>",
        f'<p class="note">Generated {_when(data.generated_at)} from the prediction, outcome '
        f"and decision logs; data from {_when(data.t0)} to {_when(data.t1)} in buckets "
        f"of {html.escape(_duration(data.bucket_s))}.</p>",
        "<h2>Experiment</h2>",
        _kv_table(definition_rows(data)),
        "<h2>Current verdict</h2>",
        _kv_table(verdict_rows(data)),
        "<h3>Arms now</h3>",
        '<p class="note">All data up to now (the verdict above is as of its decision); p50/p99 '
        "from a log-scale histogram, within about 1 %.</p>",
        _html_table(ARM_COLUMNS, arm_rows(data, series)),
        "<h2>Arm shares over time</h2>",
        notes["shares"],
        _img(figs.shares, "arm shares over time"),
        "<h2>Primary metric and confidence sequence</h2>",
        notes["metric"],
        _img(figs.metric, "primary metric and effect over time"),
        "<h2>Decision timeline</h2>",
        f'<p class="note">Decisions ({shown}), oldest first; unchanged "continue" verdicts are '
        "audited when the action changes and then periodically.</p>",
        _html_table(
            ("time (UTC)", "action", "source", "versions", "recommendation"),
            decisions,
            [d["action"] for d in data.decisions],
        )
        if decisions
        else "<p>No decisions yet.</p>",
        "<h2>Latency</h2>",
        notes["latency"],
        _img(figs.latency, "latency distribution per arm"),
        "<h2>Drift over time</h2>",
    ]
    if figs.drift is None:
        parts.append(
            "<p>No drift or decay measures yet (they start once an arm has a reference window).</p>"
        )
    else:
        parts += [
            notes["drift"],
            _img(figs.drift, "drift and decay measures over time"),
            _html_table(DRIFT_COLUMNS, drift_rows(data)),
        ]
    parts += [
        "<h2>Shadow models</h2>",
    ]
    if figs.shadows is None:
        parts.append("<p>This experiment has no shadow models.</p>")
    else:
        parts += [
            notes["shadows"],
            _img(figs.shadows, "shadow agreement over time"),
            _html_table(SHADOW_COLUMNS, shadow_rows(data)),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(data: ExperimentResults, out: Path) -> tuple[Path, Path]:
    """Write ``out/NAME.html`` and ``out/NAME.pdf`` (each via a temporary file and a rename)."""
    from matplotlib.backends.backend_pdf import PdfPages

    series = metric_series(data)
    figs = build_figures(data, series)
    out.mkdir(parents=True, exist_ok=True)
    html_path, pdf_path = out / f"{data.name}.html", out / f"{data.name}.pdf"

    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(render_html(data, series, figs), encoding="utf-8")
    os.replace(tmp, html_path)

    tmp = pdf_path.with_name(pdf_path.name + ".tmp")
    created = dt.datetime.fromtimestamp(data.generated_at, dt.UTC)
    metadata = {"Title": f"abgate report: {data.name}", "CreationDate": created}
    text = captions(data)
    with PdfPages(tmp, metadata=metadata) as pdf:
        # The same figures, drawn again on uniform A4 landscape pages with their captions.
        pdf.savefig(title_page(data, series))
        pdf.savefig(_pdf_page(lambda f: fig_shares(data, f), text["shares"]))
        pdf.savefig(_pdf_page(lambda f: fig_metric(data, series, f), text["metric"]))
        pdf.savefig(decision_page(data))
        pdf.savefig(_pdf_page(lambda f: fig_latency(data, f), text["latency"]))
        if data.drift:
            pdf.savefig(_pdf_page(lambda f: fig_drift(data, f), text["drift"]))
        if data.shadows:
            pdf.savefig(_pdf_page(lambda f: fig_shadows(data, f), text["shadows"]))
    os.replace(tmp, pdf_path)
    return html_path, pdf_path
