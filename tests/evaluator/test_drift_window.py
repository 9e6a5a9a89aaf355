"""The rolling current window (migration 0015) on a real PostgreSQL: the tick counts every
current row of the score, class, feature and decay measures per time slot of its answer time
as well as cumulatively; PSI and the current rates are taken over the slots of the last
--drift-window seconds, the sequential tests over every current row; old slots are deleted.
Through the real evaluator: a shift that is over no longer holds PSI up, a fresh one does, and
``abgate experiments show`` says what each figure was taken over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from abgate.db.migrate import migrate
from abgate.v1 import control_pb2 as cpb
from evaluator.aggregate import (
    DRIFT_SLOTS,
    aggregate,
    decay_totals,
    drift_totals,
    feature_totals,
    reset,
)
from evaluator.cli import _print_view
from evaluator.service import view_json
from evaluator.stats import psi, sequential_drift
from tests.conftest import DemoStore
from tests.evaluator.conftest import fetch, monitoring_evaluator
from tests.evaluator.test_drift import _bins, _rows
from tests.evaluator.test_feature_drift import _binned, _features, _insert_features, _run

HOUR = 3600.0
# A prediction answered `$8` seconds ago (the gateway's ts), ingested now.
INSERT_AGED = (
    "INSERT INTO predictions (request_id, ts, experiment, config_version, bucket, hash_version,"
    " arm, model_id, model_version, model_sha256, label, scores, latency_us, shadow,"
    " gateway_id, status) VALUES ($1, now() - make_interval(secs => $8), $2, 1, 0, 1, $3, 'm',"
    " '1', $4, $5, $6, $7, false, 'gw', 0)"
)


async def _aged(
    conn: asyncpg.Connection, exp: str, arm: str, rows: list[dict[str, Any]], age: float
) -> None:
    await conn.executemany(
        INSERT_AGED,
        [
            (r["rid"], exp, arm, "sha", r["label"], [1.0 - r["score"], r["score"]], 100, age)
            for r in rows
        ],
    )


async def _outcomes(conn: asyncpg.Connection, rows: list[dict[str, Any]], right: bool) -> None:
    """An outcome per row: its predicted label when ``right``, the other one when not."""
    await conn.executemany(
        "INSERT INTO outcomes (request_id, value) VALUES ($1, $2)",
        [(r["rid"], float(r["label"] if right else 1 - r["label"])) for r in rows],
    )


def test_the_window_holds_the_recent_slots_of_every_measure(fresh_db: str) -> None:
    rng = np.random.default_rng(21)
    size = 300
    reference = _rows(rng, size, 2.0, 5.0, 0)
    old = _rows(rng, 400, 5.0, 2.0, 1000)  # answered 3 h ago: shifted, every outcome wrong
    recent = _rows(rng, 500, 2.0, 5.0, 2000)  # answered now: as the reference, outcomes right
    f_ref = _features(rng, size, 0)
    f_old = _features(rng, 400, 1000, shift=(2.0, 0.0, 0.0))
    f_recent = _features(rng, 500, 2000)

    async def body(conn: asyncpg.Connection) -> None:
        await migrate(fresh_db)
        await _aged(conn, "exp", "a", reference, 5 * HOUR)
        await _outcomes(conn, reference, right=True)
        await _insert_features(conn, "exp", "a", f_ref)
        await aggregate(conn, settle=0.0, drift_reference_rows=size, drift_window=HOUR)
        await _aged(conn, "exp", "a", old, 3 * HOUR)
        await _outcomes(conn, old, right=False)
        aged_at = await conn.fetchval("SELECT now() - interval '3 hours'")
        await _insert_features(conn, "exp", "a", [{**r, "ts": aged_at} for r in f_old])
        await aggregate(conn, settle=0.0, drift_reference_rows=size, drift_window=HOUR)
        await _aged(conn, "exp", "a", recent, 0.0)
        await _outcomes(conn, recent, right=True)
        await _insert_features(conn, "exp", "a", f_recent)
        await aggregate(conn, settle=0.0, drift_reference_rows=size, drift_window=HOUR)

        # Score and class: current is every row after the reference, the window the recent.
        d = (await drift_totals(conn, "exp", HOUR))[("exp", "a")]
        score, cls = _bins(old + recent)
        assert d.current == {"score": score, "class": cls}
        score, cls = _bins(recent)
        assert d.window == {"score": score, "class": cls}
        # Features: the same bins (the reference's edges), the recent rows only.
        f = (await feature_totals(conn, "exp", HOUR))[("exp", "a")]
        for i in range(3):
            values = [r["features"][i] for r in f_recent]
            assert f.window is not None and f.window[i] == _binned(values, f.edges[i])
            everything = [r["features"][i] for r in f_old + f_recent]
            assert f.current[i] == _binned(everything, f.edges[i])
        # Decay: the old rows' wrong outcomes are current, not in the window.
        dec = (await decay_totals(conn, "exp", HOUR))[("exp", "a")]
        assert dec.current["accuracy"] == {0: 400, 1: 500}
        assert dec.window == {
            "accuracy": {1: 500},
            "outcome": {k: v for k, v in _outcome_bins(recent).items() if v},
        }
        # Nothing older than the window is kept: 3 h old slots went in the tick that read them.
        stale = await conn.fetchval(
            "SELECT count(*) FROM drift_slots WHERE slot < now() - make_interval(secs => $1)",
            HOUR + HOUR / DRIFT_SLOTS,
        )
        assert stale == 0
        assert await conn.fetchval("SELECT count(*) FROM drift_slots") > 0
        # A window longer than the rows' age reads them all (what the slots still hold).
        assert (await drift_totals(conn, "exp", 86400.0))[("exp", "a")].window == d.window
        # A full pass from the first row gives the same bins and windows.
        await reset(conn)
        await aggregate(conn, settle=0.0, drift_reference_rows=size, drift_window=HOUR)
        assert (await drift_totals(conn, "exp", HOUR))[("exp", "a")] == d
        assert (await feature_totals(conn, "exp", HOUR))[("exp", "a")] == f
        assert (await decay_totals(conn, "exp", HOUR))[("exp", "a")] == dec
        with pytest.raises(ValueError, match="drift_window"):
            await aggregate(conn, drift_window=0.0)

    _run(fresh_db, body)


def _outcome_bins(rows: list[dict[str, Any]]) -> dict[int, int]:
    positive = sum(r["label"] > 0 for r in rows)
    return {0: len(rows) - positive, 1: positive}


def test_a_shift_that_is_over_stops_holding_psi_up(
    demo_store: DemoStore, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = monitoring_evaluator(
        demo_store,
        fresh_db,
        drift_reference_rows=1000,
        drift_window=HOUR,
        drift_history_interval=1e-6,  # a row every tick
    )
    rng = np.random.default_rng(22)

    def insert(arm: str, rows: list[dict[str, Any]], age: float) -> None:
        async def body(conn: asyncpg.Connection) -> None:
            await _aged(conn, "exp", arm, rows, age)

        _run(fresh_db, body)

    def score_audits() -> list[dict[str, Any]]:
        rows = fetch(
            fresh_db,
            "SELECT statistics::text AS s, recommendation FROM decisions"
            " WHERE action = 'drift' AND statistics->>'arm' = 'treatment'"
            " AND statistics->>'kind' = 'score' ORDER BY id",
        )
        return [{"statistics": json.loads(r["s"]), **r} for r in rows]

    try:
        ref = _rows(rng, 1000, 2.0, 5.0, 0)
        insert("treatment", ref, 6 * HOUR)
        insert("control", _rows(rng, 1000, 2.0, 5.0, 50_000), 6 * HOUR)
        ev.call(ev.server.tick())
        # A shift answered 3 h ago (the gateway spooled it while the database was away), then
        # 1,000 rows as the reference, answered now.
        shifted = _rows(rng, 1500, 5.0, 2.0, 10_000)
        steady = _rows(rng, 1000, 2.0, 5.0, 20_000)
        insert("treatment", shifted, 3 * HOUR)
        insert("treatment", steady, 0.0)
        insert("control", _rows(rng, 2500, 2.0, 5.0, 60_000), 0.0)
        ev.call(ev.server.tick())
        m = ev.server.drift[("exp", "treatment")]["score"]
        r = [_bins(ref)[0].get(b, 0) for b in range(10)]
        w = [_bins(steady)[0].get(b, 0) for b in range(10)]
        c = [_bins(shifted + steady)[0].get(b, 0) for b in range(10)]
        assert psi(r, c) > 0.25  # what a cumulative window would say
        assert m.psi == pytest.approx(psi(r, w), rel=1e-12) and m.psi < 0.1
        assert (m.level, m.window_rows, m.current_rows) == ("ok", 1000, 2500)
        # The test is of every current row: the shift is in it, and it rejects.
        assert m.rejected and m.p_value == pytest.approx(sequential_drift(r, c).p_value)
        audits = score_audits()
        assert len(audits) == 1 and "sequential test rejected" in audits[0]["recommendation"]
        assert "reached" not in audits[0]["recommendation"]
        # A fresh shift, answered now: the window's PSI acts.
        fresh = _rows(rng, 1000, 5.0, 2.0, 30_000)
        insert("treatment", fresh, 0.0)
        insert("control", _rows(rng, 1000, 2.0, 5.0, 70_000), 0.0)
        ev.call(ev.server.tick())
        m = ev.server.drift[("exp", "treatment")]["score"]
        w = [_bins(steady + fresh)[0].get(b, 0) for b in range(10)]
        assert m.psi == pytest.approx(psi(r, w), rel=1e-12) and m.psi > 0.25
        assert (m.level, m.window_rows, m.current_rows) == ("act", 2000, 3500)
        audits = score_audits()
        assert len(audits) == 2 and "reached act" in audits[1]["recommendation"]
        assert audits[1]["statistics"]["window_rows"] == 2000
        # What GetExperiment (--json) and the text show.
        view = view_json(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")))
        shown = view["details"]["drift"]["treatment"]
        assert shown["window_seconds"] == HOUR
        assert shown["measures"]["score"]["window_rows"] == 2000
        assert shown["measures"]["score"]["window"] == {str(b): w[b] for b in range(10)}
        _print_view(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")), False)
        text = capsys.readouterr().out
        assert "drift treatment score: PSI" in text
        assert "(act) on 2000 rows of the last 1 h" in text
        assert "3500 current vs 1000 reference rows" in text
        # drift_history keeps what the window held.
        kept = fetch(
            fresh_db,
            "SELECT window_rows, current_rows FROM drift_history"
            " WHERE arm = 'treatment' AND measure = 'score' ORDER BY ts DESC LIMIT 1",
        )
        assert kept and (kept[0]["window_rows"], kept[0]["current_rows"]) == (2000, 3500)
    finally:
        ev.close()


def test_the_cli_refuses_a_window_that_is_not_a_positive_number_of_seconds(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    for bad in ("0", "-5", "nan", "inf"):
        got = subprocess.run(
            [sys.executable, "-m", "abgate", "evaluator", "--drift-window", bad,
             "--token", "t", "--database-url", "postgresql://127.0.0.1:1/x",
             "--model-store", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert got.returncode == 2, got.stderr
        assert "--drift-window must be a positive number of seconds" in got.stderr
