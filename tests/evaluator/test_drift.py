"""Drift monitoring on a real PostgreSQL: the tick bins each arm's first N successful served
rows as its reference and the rest as current (incrementally, from the new rows only), the
evaluator measures PSI and the sequential test per kind, audits a crossing once, and shows it
in GetExperiment (what ``abgate experiments show --json`` prints)."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from abgate.db.migrate import migrate
from abgate.v1 import control_pb2 as cpb
from evaluator.aggregate import aggregate, drift_totals, reset
from evaluator.cli import _print_view
from evaluator.metrics import EvaluatorCollector
from evaluator.service import view_json
from evaluator.stats import psi, sequential_drift
from tests.conftest import DemoStore
from tests.evaluator.conftest import InProcessEvaluator, fetch, monitoring_evaluator
from tests.evaluator.test_aggregate import INSERT_PREDICTION


def _rows(rng: np.random.Generator, n: int, a: float, b: float, start: int) -> list[dict[str, Any]]:
    scores = rng.beta(a, b, n).astype(np.float32)
    return [
        {"rid": f"r{start + i}", "score": float(s), "label": int(s >= 0.5)}
        for i, s in enumerate(scores)
    ]


async def _insert(conn: asyncpg.Connection, exp: str, arm: str, rows: list[dict[str, Any]]) -> None:
    await conn.executemany(
        INSERT_PREDICTION,
        [
            (r["rid"], exp, 1, arm, "sha", r["label"], [1.0 - r["score"], r["score"]], 100,
             r.get("shadow", False), r.get("status", 0))
            for r in rows
        ],
    )  # fmt: skip


def insert_rows(url: str, exp: str, arm: str, rows: list[dict[str, Any]]) -> None:
    """``rows`` as served predictions of ``arm``, on a connection of their own."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await _insert(conn, exp, arm, rows)
        finally:
            await conn.close()

    asyncio.run(run())


def _bins(rows: list[dict[str, Any]]) -> tuple[dict[int, int], dict[int, int]]:
    score: dict[int, int] = {}
    cls: dict[int, int] = {}
    for r in rows:
        s = r["score"]
        if 0.0 <= s <= 1.0:
            b = min(math.floor(s * 10), 9)
            score[b] = score.get(b, 0) + 1
        cls[r["label"]] = cls.get(r["label"], 0) + 1
    return score, cls


def test_reference_and_current_bins_are_the_rows_in_ingest_order(fresh_db: str) -> None:
    rng = np.random.default_rng(3)
    ref_size = 300
    steady = _rows(rng, 500, 2.0, 5.0, 0)
    shifted = _rows(rng, 400, 5.0, 2.0, 1000)
    every = steady + shifted
    # Left out: a failed row, a shadow row, a second row of a served request id, a NaN score
    # (in a class bin, in no score bin).
    noise = [
        {"rid": "err", "score": 0.0, "label": -1, "status": 13},
        {"rid": "r0", "score": 0.9, "label": 1, "shadow": True},
        {"rid": "r1", "score": 0.9, "label": 1},
    ]
    nan_row = {"rid": "nan", "score": float("nan"), "label": 0}

    async def run() -> None:
        await migrate(fresh_db)
        conn = await asyncpg.connect(fresh_db)
        try:
            random.seed(5)
            # Rows arrive in chunks with ticks between, the noise somewhere in the reference
            # (its own statement: a row of the same request id needs another ts).
            counted = [*every[:100], nan_row, *every[100:]]
            chunks = [every[:100], [*noise, nan_row]]
            i = 100
            while i < len(every):
                step = random.randint(1, 250)
                chunks.append(every[i : i + step])
                i += step
            for chunk in chunks:
                await _insert(conn, "exp", "a", chunk)
                await aggregate(conn, settle=0.0, drift_reference_rows=ref_size)
            # A second arm, whose reference is not complete.
            await _insert(conn, "exp", "b", _rows(rng, 50, 2.0, 5.0, 5000))
            await aggregate(conn, settle=0.0, drift_reference_rows=ref_size)
            got = await drift_totals(conn, "exp")
            ref_score, ref_cls = _bins(counted[:ref_size])
            cur_score, cur_cls = _bins(counted[ref_size:])
            a = got[("exp", "a")]
            assert (a.reference_size, a.reference_rows) == (ref_size, ref_size)
            assert a.reference == {"score": ref_score, "class": ref_cls}
            assert a.current == {"score": cur_score, "class": cur_cls}
            assert got[("exp", "b")].reference_rows == 50
            # A full pass from the first row gives the same bins.
            await reset(conn)
            await aggregate(conn, settle=0.0, drift_reference_rows=ref_size)
            again = await drift_totals(conn, "exp")
            assert again[("exp", "a")] == a
            # An arm keeps the reference size it started with, whatever the flag says later.
            await _insert(conn, "exp", "b", _rows(rng, 10, 2.0, 5.0, 6000))
            await aggregate(conn, settle=0.0, drift_reference_rows=5)
            b = (await drift_totals(conn, "exp"))[("exp", "b")]
            assert (b.reference_size, b.reference_rows) == (ref_size, 60)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_score_shift_is_measured_audited_once_and_shown(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = monitoring_evaluator(demo_store, fresh_db, drift_reference_rows=1000)
    rng = np.random.default_rng(8)
    try:
        # Both arms get as many rows (the SRM check would pause the experiment otherwise).
        ref = _rows(rng, 1000, 2.0, 5.0, 0)
        control_ref = _rows(rng, 1000, 2.0, 5.0, 40_000)
        steady = _rows(rng, 2500, 2.0, 5.0, 10_000)
        shifted = _rows(rng, 2000, 5.0, 2.0, 20_000)

        def drift_audits() -> list[dict[str, Any]]:
            rows = fetch(
                fresh_db,
                "SELECT statistics::text AS s, recommendation FROM decisions"
                " WHERE action = 'drift' ORDER BY id",
            )
            return [{"statistics": json.loads(r["s"]), **r} for r in rows]

        # The references, in two ticks: nothing measured before they are complete.
        insert_rows(fresh_db, "exp", "treatment", ref[:600])
        insert_rows(fresh_db, "exp", "control", control_ref[:600])
        ev.call(ev.server.tick())
        assert ev.server.drift == {}
        insert_rows(fresh_db, "exp", "treatment", ref[600:])
        insert_rows(fresh_db, "exp", "control", control_ref[600:])
        ev.call(ev.server.tick())
        assert set(ev.server.drift) == {("exp", "control"), ("exp", "treatment")}
        insert_rows(fresh_db, "exp", "control", steady[:2000])
        insert_rows(fresh_db, "exp", "treatment", shifted)
        for _ in range(3):  # three looks at the same shift: one audit row per crossing
            ev.call(ev.server.tick())
        audits = drift_audits()
        treatment = [a for a in audits if a["statistics"]["arm"] == "treatment"]
        assert [a for a in audits if a["statistics"]["arm"] == "control"] == []
        assert sorted(a["statistics"]["kind"] for a in treatment) == ["class", "score"]
        ref_score, _ = _bins(ref)
        assert ev.server.latest["exp"].state.status == "running"
        cur_score, _ = _bins(shifted)
        r = [ref_score.get(b, 0) for b in range(10)]
        c = [cur_score.get(b, 0) for b in range(10)]
        want_psi = psi(r, c)
        assert want_psi > 0.25
        score = next(a for a in treatment if a["statistics"]["kind"] == "score")
        assert score["statistics"]["psi"] == pytest.approx(want_psi, rel=1e-12)
        assert score["statistics"]["level"] == "act" and score["statistics"]["rejected"]
        assert "reached act" in score["recommendation"]
        assert "sequential test rejected" in score["recommendation"]
        # More shifted rows: the same crossings are not audited again.
        insert_rows(fresh_db, "exp", "treatment", _rows(rng, 500, 5.0, 2.0, 30_000))
        insert_rows(fresh_db, "exp", "control", steady[2000:])
        ev.call(ev.server.tick())
        assert len(drift_audits()) == len(audits)

        view = view_json(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")))
        shown = view["details"]["drift"]
        t = shown["treatment"]["measures"]["score"]
        r2 = [ref_score.get(b, 0) for b in range(10)]
        assert t["reference"] == {str(b): r2[b] for b in range(10)}
        assert t["current_rows"] == 2500 and t["reference_rows"] == 1000
        assert t["psi"] == pytest.approx(psi(r2, [t["current"][str(b)] for b in range(10)]))
        assert t["p_value"] == pytest.approx(
            sequential_drift(r2, [t["current"][str(b)] for b in range(10)]).p_value, abs=1e-12
        )
        assert sum(t["current"].values()) == 2500
        control = shown["control"]["measures"]
        assert control["score"]["level"] == "ok" and not control["score"]["rejected"]
        assert control["score"]["psi"] < 0.1
        assert json.dumps(view)  # what --json prints
        # The /metrics gauges, as the collector yields them at a scrape.
        families = {f.name: f for f in EvaluatorCollector(ev.server).collect()}
        gauges = {
            (f.name, s.labels["arm"], s.labels["kind"]): s.value
            for f in (families["abgate_drift_psi"], families["abgate_drift_p_value"])
            for s in f.samples
        }
        assert gauges[("abgate_drift_psi", "treatment", "score")] == pytest.approx(t["psi"])
        assert gauges[("abgate_drift_p_value", "treatment", "score")] == pytest.approx(
            t["p_value"], abs=1e-12
        )
        assert gauges[("abgate_drift_psi", "control", "class")] < 0.1
        assert len(gauges) == 8  # 2 arms x 2 kinds x 2 gauges
        # The text `abgate experiments show` prints.
        _print_view(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")), False)
        text = capsys.readouterr().out
        assert "drift treatment score: PSI" in text and "act" in text
        assert "drift control class: PSI" in text
        # Another evaluator (a restart, a new leader) does not audit the same crossings again.
        ev.close()
        ev = InProcessEvaluator(ev.settings)
        ev.call(ev.server.tick())
        assert ("exp", "treatment") in ev.server.drift
        assert len(drift_audits()) == len(audits)
    finally:
        ev.close()


def test_drift_over_time_is_kept_and_reported(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    """Each tick's drift measures go to drift_history at most every --drift-history-interval;
    the report draws them over time and tables the latest, with when warn and act were first
    reached (issue #16: drift over time in the HTML/PDF report)."""
    import time

    from evaluator.report import write_report
    from evaluator.results import load_results

    ev = monitoring_evaluator(
        demo_store, fresh_db, drift_reference_rows=500, drift_history_interval=10.0
    )
    rng = np.random.default_rng(9)
    t0 = time.time()
    try:
        insert_rows(fresh_db, "exp", "treatment", _rows(rng, 500, 2.0, 5.0, 0))
        insert_rows(fresh_db, "exp", "control", _rows(rng, 500, 2.0, 5.0, 10_000))
        ev.call(ev.server.tick(now=t0))  # the references are complete: nothing current yet
        # Steady traffic, then the treatment's scores shift; a tick every 5 s of tick time.
        for k in range(1, 7):
            shifted = k >= 4
            a, b = (5.0, 2.0) if shifted else (2.0, 5.0)
            insert_rows(fresh_db, "exp", "treatment", _rows(rng, 300, a, b, 1000 * k))
            insert_rows(fresh_db, "exp", "control", _rows(rng, 300, 2.0, 5.0, 20_000 + 1000 * k))
            ev.call(ev.server.tick(now=t0 + 5 * k))
        rows = fetch(
            fresh_db,
            "SELECT arm, measure, extract(epoch FROM ts)::float8 AS t, psi, level, current_rows"
            " FROM drift_history ORDER BY ts, arm, measure",
        )
        # Kept at ticks 0, 10 and 20 s (and 30 s): every other tick, 10 s apart.
        times = sorted({round(r["t"] - t0) for r in rows})
        assert times == [0, 10, 20, 30], times
        assert {(r["arm"], r["measure"]) for r in rows} == {
            (arm, kind) for arm in ("control", "treatment") for kind in ("score", "class")
        }
        score = [r for r in rows if (r["arm"], r["measure"]) == ("treatment", "score")]
        assert [r["current_rows"] for r in score] == [0, 600, 1200, 1800]
        assert score[1]["level"] == "ok" and score[-1]["level"] == "act"
        data = asyncio.run(load_results(fresh_db, "exp", None))
        points = data.drift[("treatment", "score")]
        assert [p.current_rows for p in points] == [0, 600, 1200, 1800]
        assert points[-1].psi == pytest.approx(score[-1]["psi"])
        html_path, pdf_path = write_report(data, tmp_path / "report")
        html = html_path.read_text()
        section = html[html.index("<h2>Drift over time</h2>") : html.index("<h2>Shadow models")]
        assert "drift and decay measures over time" in section  # the figure
        row = next(r for r in section.split("<tr") if "<td>treatment</td><td>score</td>" in r)
        assert f"<td>{score[-1]['psi']:.3g}</td>" in row and "act" in row
        assert pdf_path.read_bytes().startswith(b"%PDF")
    finally:
        ev.close()


def test_drift_history_interval_must_not_be_negative(
    fresh_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from abgate.cli import main

    monkeypatch.setenv("ABGATE_TOKEN", "t" * 32)
    store = tmp_path / "models"
    store.mkdir()
    code = main(["evaluator", "--database-url", fresh_db, "--model-store", str(store),
                 "--drift-history-interval", "-1"])  # fmt: skip
    assert code == 2
    assert "--drift-history-interval must be 0 (off) or more seconds" in capsys.readouterr().err
