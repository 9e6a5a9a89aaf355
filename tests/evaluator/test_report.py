"""``abgate report`` on a real experiment: predictions, outcomes and shadow rows go through a
gateway into PostgreSQL, the evaluator promotes the better arm, and the report (HTML + PDF) is
built from the database by the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from abgate.client import GatewayClient
from abgate.v1 import control_pb2 as cpb
from evaluator.aggregate import ArmTotals, arm_totals
from evaluator.report import (
    ReportData,
    bucket_width,
    histogram_quantile,
    load_report,
    metric_series,
)
from evaluator.stats import ArmStats, sequential_test
from tests.conftest import (
    DemoStore,
    InProcessGateway,
    execute_sql,
    gateway_settings,
    with_database,
)
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.onnx_models import constant_model, register

SECTIONS = (
    "Experiment",
    "Current verdict",
    "Arm shares over time",
    "Primary metric and confidence sequence",
    "Decision timeline",
    "Latency",
    "Shadow models",
)


@dataclass(frozen=True)
class Decided:
    url: str
    totals: dict[str, ArmTotals]  # the evaluator's own aggregates after the last tick


def _traffic(gw: InProcessGateway, store: DemoStore, n: int, rng: np.random.Generator) -> None:
    """``n`` predictions for random users, each followed by its true label as the outcome."""
    outcomes = []
    with GatewayClient(gw.target) as client:
        for _ in range(n):
            i = int(rng.integers(len(store.X)))
            r = client.predict("exp", f"user-{rng.integers(1 << 40)}", store.X[i])
            outcomes.append((r["request_id"], float(store.y[i]), ""))
        assert client.record_outcomes(outcomes) == n


def _settle(gw: InProcessGateway) -> None:
    for writer in (gw.server.logwriter, gw.server.outcome_writer):
        while writer is not None and writer.queued:
            time.sleep(0.02)
    time.sleep(0.06)


@pytest.fixture(scope="module")
def decided(
    demo_store: DemoStore, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Decided]:
    """A database holding "exp" (a constant control against demo-gbdt, a logreg shadow,
    promoted by the policy, then served at 100 %) and "idle" (created, never called)."""
    name = f"abgate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute_sql(pg_url, f'CREATE DATABASE "{name}"'))
    url = with_database(pg_url, name)
    tmp = tmp_path_factory.mktemp("report")
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    constant = register(demo_store.root, tmp, "constant", constant_model(demo_store.X.shape[1]))
    ev = InProcessEvaluator(evaluator_settings(url, settle=0.0))
    gw: InProcessGateway | None = None
    try:
        definition = ab_definition(
            "exp", constant, shas["demo-gbdt"], primary_metric="accuracy", min_samples=150,
            min_effect=0.05,
            shadows=[cpb.ShadowConfig(name="logreg", model=shas["demo-logreg"], sample_rate=0.5)],
        )  # fmt: skip
        created = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
        )
        idle = ab_definition("idle", constant, shas["demo-gbdt"])
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=idle))
        settings = gateway_settings(
            demo_store, tmp / "gw", url, config=None, evaluator=ev.target, evaluator_token=TOKEN,
            gateway_id="gw-report",
        )  # fmt: skip
        gw = InProcessGateway(settings)
        assert ev.call(ev.server.publisher.wait_acked(created.snapshot_version, count=1))

        rng = np.random.default_rng(11)
        view = created
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and view.status == "running":
            _traffic(gw, demo_store, 40, rng)
            _settle(gw)
            ev.call(ev.server.tick())
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
        assert view.status == "promoted", view.verdict.recommendation
        assert ev.call(ev.server.publisher.wait_acked(view.snapshot_version, timeout=10))
        for _ in range(4):  # served at 100 % after the promotion: the shares plot shows it
            _traffic(gw, demo_store, 40, rng)
            time.sleep(0.1)
        time.sleep(0.3)  # the shadow worker's last batch
        gw.close()  # flushes every logged row
        gw = None
        # A last tick over everything, so the evaluator's sums are complete.
        ev.call(ev.server.tick())
        store = ev.server.store
        assert store is not None
        totals = ev.call(arm_totals(store.pool, "exp"))
    finally:
        if gw is not None:
            gw.close()
        ev.close()
    try:
        yield Decided(url, totals)
    finally:
        asyncio.run(execute_sql(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _report(url: str, experiment: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", "report", "--experiment", experiment, "--out", str(out),
         "--database-url", url, *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_of_a_decided_experiment(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "exp", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    html_path, pdf_path = tmp_path / "out" / "exp.html", tmp_path / "out" / "exp.pdf"
    assert r.stdout.split() == [str(html_path), str(pdf_path)]

    page = html_path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    pngs = _pngs(page)
    assert len(pngs) >= 4 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<td>promote</td>" in page and "promote treatment" in page
    assert "logreg" in page and "demo-gbdt" in page

    pdf = pdf_path.read_bytes()
    assert pdf.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
    assert pages >= 4, pages


def test_report_series_match_the_evaluators_aggregates(decided: Decided) -> None:
    data: ReportData = asyncio.run(load_report(decided.url, "exp", None))
    assert data.n_buckets <= 61 and data.arms == ["control", "treatment"]
    for arm in data.arms:
        t = decided.totals[arm]
        assert int(data.served[arm].sum()) == t.served
        n, correct, _ = data.metric[arm].sum(axis=0)
        assert (int(n), int(correct)) == (t.outcome_n, t.correct)
        assert sum(data.latency[arm].values()) == t.served
    # The last point of the confidence sequence is the test on all the data.
    series = metric_series(data)
    c, t = (decided.totals[a] for a in data.arms)
    final = sequential_test(
        ArmStats(c.outcome_n, c.correct, c.correct), ArmStats(t.outcome_n, t.correct, t.correct)
    )
    assert series.effect["treatment"][-1] == pytest.approx(final.effect)
    assert series.lo["treatment"][-1] == pytest.approx(final.ci[0])
    assert series.hi["treatment"][-1] == pytest.approx(final.ci[1])
    # Shadow pairs over time add up to the evaluator's pairwise summary.
    pairs = data.shadow_pairs["logreg"].sum(axis=0)
    summary = data.shadow_summary["logreg"]
    assert int(pairs[0]) == summary["pairs"] > 0
    assert pairs[1] / pairs[0] == pytest.approx(summary["agreement"])
    assert [(d["action"], d["source"]) for d in data.markers] == [
        ("create", "admin"),
        ("promote", "policy"),
    ]


def test_report_of_an_experiment_without_traffic(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "idle", tmp_path, "--bucket-seconds", "60")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "idle.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # shares, metric, latency; no shadows
    assert "continue: waiting for 1000 samples per arm" in page
    assert "No decisions yet" not in page and "This experiment has no shadow models" in page
    assert (tmp_path / "idle.pdf").read_bytes().startswith(b"%PDF")


def test_unknown_experiment_is_not_found(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "nope", tmp_path)
    assert r.returncode == 1
    assert "NOT_FOUND: unknown experiment 'nope'" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["--experiment", "exp"],  # no --out
        ["--experiment", "exp", "--out", "x", "--bucket-seconds", "soon"],
        ["--experiment", "exp", "--out", "x", "--bucket-seconds", "-5"],
        ["--experiment", "", "--out", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "report", *args, "--database-url", "postgresql:///x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "x").exists()


def test_bucket_width_and_latency_quantiles() -> None:
    assert bucket_width(3.0, None) == 0.05
    assert bucket_width(3600.0, None) == 60.0
    assert bucket_width(30 * 86400.0, None) == 43200.0
    assert bucket_width(100.0, 1.0) == 1.0
    assert bucket_width(1e6, 1.0) == 1e6 / 2000
    # 1000 rows in one fine bin [2^(320/32), 2^(321/32)) = [1024, 1046.4) µs.
    assert 1024.0 <= histogram_quantile({320: 1000}, 0.5) < 1046.5
    assert histogram_quantile({320: 99, 352: 1}, 0.99) < 1046.5
    assert histogram_quantile({320: 98, 352: 2}, 0.99) >= 2048.0
    assert np.isnan(histogram_quantile({}, 0.5))
