"""Per-experiment drift levels (DriftThresholds: PSI warn and act, the tests' alpha) through a
real evaluator on PostgreSQL: validated on create and update (INVALID_ARGUMENT naming the field,
nothing changed), stored with the version, used by the tick (the audit row's level) and by
GetExperiment (measured again with the levels as they stand), exported for the alert rules, and
set and shown by ``abgate experiments create/update/show``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from evaluator.cli import _print_view
from evaluator.metrics import EvaluatorCollector
from evaluator.service import view_json
from tests.conftest import DemoStore
from tests.evaluator.conftest import InProcessEvaluator, ab_definition, evaluator_settings, fetch
from tests.evaluator.test_control_plane import abgate
from tests.evaluator.test_drift import _rows, insert_rows


def _refused(call: Any, method: str, request: Any) -> str:
    """The details of an INVALID_ARGUMENT the call fails with."""
    try:
        call(method, request)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        return str(exc.details())
    raise AssertionError(f"{method} succeeded")


BAD = [
    ({"psi_warn": 0.3, "psi_act": 0.2}, "definition.drift.psi_act"),
    ({"psi_act": 0.05}, "definition.drift.psi_act"),  # below the default warn 0.1
    ({"psi_warn": -1.0}, "definition.drift.psi_warn"),
    ({"psi_warn": 0.0}, "definition.drift.psi_warn"),
    ({"psi_act": math.inf}, "definition.drift.psi_act"),
    ({"alpha": 1.0}, "definition.drift.alpha"),
    ({"alpha": math.nan}, "definition.drift.alpha"),
    ({"alpha": 0.0}, "definition.drift.alpha"),
]


def test_the_experiments_levels_decide_its_drift(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    control, treatment = shas["demo-logreg"], shas["demo-gbdt"]
    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, settle=0.0, tick_interval=3600, drift_reference_rows=1000
        )
    )
    rng = np.random.default_rng(21)
    try:
        for given, fld in BAD:
            d = ab_definition("exp", control, treatment, drift=cpb.DriftThresholds(**given))
            details = _refused(
                ev.admin.call, "CreateExperiment", cpb.CreateExperimentRequest(definition=d)
            )
            assert fld in details, (given, details)
        assert ev.admin.call("ListExperiments", cpb.ListExperimentsRequest()).experiments == []
        # Act at PSI 100: a large shift only warns.
        d = ab_definition("exp", control, treatment, drift=cpb.DriftThresholds(psi_act=100.0))
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=d))

        def audits() -> list[dict[str, Any]]:
            rows = fetch(
                fresh_db,
                "SELECT statistics::text AS s FROM decisions WHERE action = 'drift' ORDER BY id",
            )
            return [json.loads(r["s"]) for r in rows]

        def measures() -> dict[str, Any]:
            view = view_json(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")))
            drift = view["details"]["drift"]
            return {arm: drift[arm]["measures"]["score"] for arm in ("control", "treatment")}

        insert_rows(fresh_db, "exp", "treatment", _rows(rng, 1000, 2.0, 5.0, 0))
        insert_rows(fresh_db, "exp", "control", _rows(rng, 1000, 2.0, 5.0, 10_000))
        ev.call(ev.server.tick())
        # Control: a mild shift (its p-value between the alphas tried below); treatment: a
        # large one.
        insert_rows(fresh_db, "exp", "control", _rows(rng, 2000, 2.8, 5.0, 20_000))
        insert_rows(fresh_db, "exp", "treatment", _rows(rng, 2000, 5.0, 2.0, 30_000))
        ev.call(ev.server.tick())
        got = measures()
        assert got["treatment"]["psi"] > 0.25  # act at the default levels
        assert got["treatment"]["level"] == "warn"
        score = [a for a in audits() if a["arm"] == "treatment" and a["kind"] == "score"]
        assert [a["level"] for a in score] == ["warn"]

        # Refused updates change nothing.
        for given, fld in BAD:
            request = cpb.ExperimentRequest(name="exp", drift=cpb.DriftThresholds(**given))
            details = _refused(ev.admin.call, "UpdateExperiment", request)
            assert fld.removeprefix("definition.") in details, (given, details)
        assert ev.server.latest["exp"].state.psi_act == 100.0
        assert measures()["treatment"]["level"] == "warn"

        # Act at 0.2: GetExperiment measures with it at once; the next tick audits the crossing.
        version = ev.server.latest["exp"].version
        request = cpb.ExperimentRequest(name="exp", drift=cpb.DriftThresholds(psi_act=0.2))
        ev.admin.call("UpdateExperiment", request)
        assert measures()["treatment"]["level"] == "act"
        ev.call(ev.server.tick())
        score = [a for a in audits() if a["arm"] == "treatment" and a["kind"] == "score"]
        assert [a["level"] for a in score] == ["warn", "act"]
        stored = fetch(
            fresh_db,
            "SELECT version, config->>'psi_warn' AS warn, config->>'psi_act' AS act,"
            " config->>'drift_alpha' AS alpha FROM experiment_versions"
            " WHERE experiment = 'exp' ORDER BY version",
        )
        assert [(r["version"], float(r["act"])) for r in stored][-2:] == [
            (version, 100.0),
            (version + 1, 0.2),
        ]
        assert (float(stored[-1]["warn"]), float(stored[-1]["alpha"])) == (0.1, 0.01)
        history = fetch(
            fresh_db,
            "SELECT inputs::text AS i FROM decisions WHERE action = 'update' ORDER BY id",
        )
        assert json.loads(history[-1]["i"])["drift"] == {
            "psi_warn": 0.1,
            "psi_act": 0.2,
            "alpha": 0.01,
        }

        # Alpha: the control arm's mild shift is rejected or not by the experiment's level.
        p = measures()["control"]["p_value"]
        assert 1e-100 < p < 0.5, p
        for alpha, rejected in ((p / 10, False), (min(0.99, p * 10), True)):
            request = cpb.ExperimentRequest(name="exp", drift=cpb.DriftThresholds(alpha=alpha))
            ev.admin.call("UpdateExperiment", request)
            assert measures()["control"]["rejected"] is rejected, (alpha, p)

        # The levels the alert rules compare against, and what `experiments show` prints.
        families = {f.name: f for f in EvaluatorCollector(ev.server).collect()}
        levels = {
            name: [(s.labels["experiment"], s.value) for s in families[name].samples]
            for name in ("abgate_drift_psi_warn", "abgate_drift_psi_act", "abgate_drift_alpha")
        }
        assert levels["abgate_drift_psi_warn"] == [("exp", 0.1)]
        assert levels["abgate_drift_psi_act"] == [("exp", 0.2)]
        assert levels["abgate_drift_alpha"] == [("exp", pytest.approx(min(0.99, p * 10)))]
        _print_view(ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp")), False)
        assert "drift levels: PSI warn 0.1, act 0.2; tests at α" in capsys.readouterr().out
    finally:
        ev.close()


def test_cli_sets_and_shows_the_levels(
    evaluator: InProcessEvaluator, demo_store: DemoStore
) -> None:
    control = demo_store.metas["demo-logreg"].sha256
    treatment = demo_store.metas["demo-gbdt"].sha256
    target = ("--evaluator", evaluator.target)
    arms = ("--arm", f"control={control}", "--arm", f"treatment={treatment}")
    r = abgate("experiments", "create", *target, "--name", "lv", *arms,
               "--psi-warn", "0.3", "--psi-act", "0.2")  # fmt: skip
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr, r.stderr
    assert "definition.drift.psi_act" in r.stderr
    r = abgate("experiments", "create", *target, "--name", "lv", *arms,
               "--psi-act", "0.4", "--drift-alpha", "0.05")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "drift levels: PSI warn 0.1, act 0.4; tests at α 0.05" in r.stdout
    r = abgate("experiments", "update", "lv", *target, "--drift-alpha", "1")
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "drift.alpha" in r.stderr
    r = abgate("experiments", "update", "lv", *target)  # no flag: says what it can change
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr, r.stderr
    assert "nothing to update: give feature_sample_rate, drift" in r.stderr
    assert "add_shadows or remove_shadows" in r.stderr
    r = abgate("experiments", "update", "lv", *target, "--psi-warn", "0.2")
    assert r.returncode == 0, r.stderr
    r = abgate("experiments", "show", "lv", *target, "--json", "--full")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["definition"]["drift"] == {
        "psi_warn": 0.2,
        "psi_act": 0.4,
        "alpha": 0.05,
    }
