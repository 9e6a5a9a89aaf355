"""Questions in plain words: the parser against a table of phrasings (tests/evaluator/data/
nlq_phrasings.json: misspellings, windows, metrics, and questions it must refuse, naming the
part it did not understand), and answers through ``abgate ask`` and ``POST /nlq`` on a real
evaluator and PostgreSQL, computed with the policies' test."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluator.nlq import EXAMPLES, Catalog, NotUnderstood, parse

TABLE = json.loads((Path(__file__).parent / "data" / "nlq_phrasings.json").read_text())


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


CATALOG = Catalog(
    experiments=TABLE["catalog"]["experiments"],
    models={k: (v[0], v[1]) for k, v in TABLE["catalog"]["models"].items()},
)
NOW = _epoch(TABLE["now"])


def test_the_table_has_enough_phrasings() -> None:
    assert len(TABLE["cases"]) >= 40
    assert sum("refuse" in c for c in TABLE["cases"]) >= 8


@pytest.mark.parametrize("case", TABLE["cases"], ids=lambda c: c["q"][:40] or "empty")
def test_each_phrasing(case: dict[str, Any]) -> None:
    if "refuse" in case:
        with pytest.raises(NotUnderstood) as info:
            parse(case["q"], CATALOG, NOW)
        assert case["refuse"] in info.value.message
        assert EXAMPLES[0] in info.value.message  # with examples of what it can answer
        return
    q = parse(case["q"], CATALOG, NOW)
    assert q.experiment == case["experiment"]
    if "arms" in case:
        assert list(q.arms) == case["arms"]
    if "metric" in case:
        assert q.metric == case["metric"]
    assert q.window.label == case.get("window", "the whole experiment")
    if "start" in case:
        assert q.window.start == pytest.approx(_epoch(case["start"]))
    assert q.recommend == case.get("recommend", False)


def _insert_outcomes(url: str, outcomes: list[tuple[str, float]]) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO outcomes (request_id, value) VALUES ($1, $2)", outcomes
            )
        finally:
            await conn.close()

    asyncio.run(run())


def test_asked_through_the_cli_and_http(
    fresh_db: str, demo_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from abgate.v1 import control_pb2 as cpb
    from evaluator.results import load_results
    from evaluator.stats import ArmStats, sequential_test
    from tests.evaluator.conftest import InProcessEvaluator, ab_definition, evaluator_settings
    from tests.evaluator.test_drift import _rows, insert_rows
    from tests.evaluator.test_http_api import Http

    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, http_listen="127.0.0.1:0", settle=0.0, tick_interval=3600
        )
    )
    try:
        shas = {m.id: m.sha256 for m in demo_store.metas.values()}
        d = ab_definition("checkout", shas["demo-logreg"], shas["demo-gbdt"],
                          primary_metric="score", min_samples=10**6)  # fmt: skip
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=d))
        rng = np.random.default_rng(3)
        rows = {
            "control": _rows(rng, 400, 2.0, 5.0, 0),
            "treatment": _rows(rng, 400, 5.0, 2.0, 1000),
        }
        confusion = {}
        for arm, arm_rows in rows.items():
            insert_rows(fresh_db, "checkout", arm, arm_rows)
            outcomes = [(r["rid"], float(rng.random() < r["score"])) for r in arm_rows]
            _insert_outcomes(fresh_db, outcomes)
            said = np.array([r["label"] > 0 for r in arm_rows])
            was = np.array([v > 0 for _, v in outcomes])
            confusion[arm] = (int((said & was).sum()), int((said & ~was).sum()),
                              int((~said & was).sum()), int((~said & ~was).sum()))  # fmt: skip
        question = "compare A and B over the last 7 days and recommend a rollout"
        http = Http(ev.server.http_port)
        got = http("POST", "/nlq", {"question": question})
        assert got.status == 200, got.doc
        a = got.doc
        assert a["experiment"] == "checkout" and a["arms"] == ["control", "treatment"]
        assert a["window"]["label"] == "last 7 days" and a["n"] == {
            "control": 400,
            "treatment": 400,
        }
        # The policies' test on the same rows.
        import asyncio

        data = asyncio.run(load_results(fresh_db, "checkout", None))
        c, t = (np.asarray(data.metric[arm]).sum(axis=0) for arm in ("control", "treatment"))
        r = sequential_test(ArmStats(int(c[0]), c[1], c[2]), ArmStats(int(t[0]), t[1], t[2]), 0.05)
        assert a["p_value"] == pytest.approx(r.p_value, rel=1e-9, abs=1e-300)
        assert a["effect_size"] == pytest.approx(r.effect, rel=1e-9)
        assert a["winner"] == "treatment" and a["ci"][0] > 0
        # At 50 % the next canary stage is 100 %.
        assert (
            a["recommendation"] == "promote treatment to 100 %; watch error rate and p99 for 24 h"
        )
        # Precision, recall and FPR per arm from the labelled rows (binary labels).
        for metric, pick in (("precision", lambda tp, fp, fn, tn: tp / (tp + fp)),
                             ("recall", lambda tp, fp, fn, tn: tp / (tp + fn)),
                             ("FPR", lambda tp, fp, fn, tn: fp / (fp + tn)),
                             ("accuracy", lambda tp, fp, fn, tn: (tp + tn) / 400)):  # fmt: skip
            got = http("POST", "/nlq", {"question": f"{metric} of A vs B last 7 days"})
            assert got.status == 200, got.doc
            for arm in ("control", "treatment"):
                assert got.doc["values"][arm] == pytest.approx(pick(*confusion[arm]), rel=1e-12)
            assert got.doc["p_value"] is not None
        # The same rates per arm in the evaluator's aggregates: experiments show (and --json).
        ev.call(ev.server.tick())
        view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="checkout"))
        arms = json.loads(view.details_json)["statistics"]["arms"]
        for arm, (tp, fp, fn, tn) in confusion.items():
            assert arms[arm]["precision"] == pytest.approx(tp / (tp + fp), rel=1e-12)
            assert arms[arm]["recall"] == pytest.approx(tp / (tp + fn), rel=1e-12)
            assert arms[arm]["fpr"] == pytest.approx(fp / (fp + tn), rel=1e-12)
        from evaluator.cli import _print_view

        _print_view(view, False)
        tp, fp, fn, tn = confusion["treatment"]
        shown = capsys.readouterr().out
        assert f"labelled rows of treatment: precision {tp / (tp + fp):.4f}, recall" in shown
        refused = http("POST", "/nlq", {"question": "what is the weather"})
        assert refused.status == 400 and "“weather”" in refused.doc["error"]["message"]
        assert refused.doc["examples"] == list(EXAMPLES)
        assert http("POST", "/nlq", {"q": "x"}).status == 400
        env = {"PATH": "/usr/bin:/bin"}
        ask = [sys.executable, "-m", "abgate", "ask"]
        r2 = subprocess.run([*ask, question, "--database-url", fresh_db], capture_output=True,
                            text=True, timeout=60, env=env)  # fmt: skip
        assert r2.returncode == 0, r2.stderr
        assert "checkout, score over last 7 days: control" in r2.stdout
        assert "winner: treatment" in r2.stdout
        r3 = subprocess.run([sys.executable, "-m", "abgate", "ask", "compare bananas",
                             "--database-url", fresh_db], capture_output=True, text=True,
                            timeout=60, env=env)  # fmt: skip
        assert r3.returncode == 1 and "“bananas”" in r3.stderr and "I can answer" in r3.stderr
    finally:
        ev.close()


def test_latency_is_taken_over_the_window_asked(
    evaluator: Any, demo_store: Any, fresh_db: str
) -> None:
    """p99 over "the last 2 days" is the recent rows' (1 ms, 2 ms), over the whole experiment
    the slow old rows' (50 ms): the histograms are kept per time bucket for a question."""
    import asyncio

    import asyncpg

    from abgate.v1 import control_pb2 as cpb
    from evaluator.nlq import ask
    from tests.evaluator.conftest import ab_definition

    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    d = ab_definition("lat", shas["demo-logreg"], shas["demo-gbdt"], min_samples=10**6)
    evaluator.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=d))
    sql = (
        "INSERT INTO predictions (request_id, ts, experiment, config_version, bucket,"
        " hash_version, arm, model_id, model_version, model_sha256, label, scores, latency_us,"
        " shadow, gateway_id, status) SELECT $1 || g, now() - $2::text::interval, 'lat', 1, 0,"
        " 1, $3, 'm', '1', 'sha', 1, ARRAY[0.4, 0.6]::real[], $4, false, 'gw', 0"
        " FROM generate_series(1, 200) g"
    )

    async def insert() -> float:
        conn = await asyncpg.connect(fresh_db)
        try:
            for arm, recent_us in (("control", 1000), ("treatment", 2000)):
                await conn.execute(sql, f"old-{arm}-", "3 days", arm, 50_000)
                await conn.execute(sql, f"new-{arm}-", "1 hour", arm, recent_us)
            return float(await conn.fetchval("SELECT extract(epoch FROM now())"))
        finally:
            await conn.close()

    now = asyncio.run(insert())
    recent = asyncio.run(
        ask(fresh_db, "p99 latency of control vs treatment in lat last 2 days", now)
    )
    assert recent["n"] == {"control": 200, "treatment": 200}
    assert recent["values"]["control"] == pytest.approx(1.0, rel=0.03)  # ms
    assert recent["values"]["treatment"] == pytest.approx(2.0, rel=0.03)
    whole = asyncio.run(ask(fresh_db, "p99 latency of control vs treatment in lat", now))
    assert whole["n"] == {"control": 400, "treatment": 400}
    assert whole["values"]["control"] == pytest.approx(50.0, rel=0.03)
    assert "latency is over" not in recent["answer"]
