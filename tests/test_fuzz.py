"""Seeded protocol fuzzing (``benchmarks/fuzz.py``) of a real gateway and a real evaluator:
a few thousand mutated messages over every method of the native API, OIP V2, health and the
admin API. No call may end UNKNOWN, INTERNAL, RESOURCE_EXHAUSTED or past its deadline, no
answer may leak internals, every PredictStream message gets its own answer, a bad token is
UNAUTHENTICATED, and good requests answer afterwards. ``make bench-all`` runs 50,000 calls."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmarks.fuzz import Fuzzer, Target, create_seed_experiment
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, evaluator_settings

CALLS = 3000


@pytest.mark.slow
def test_fuzzed_calls_never_end_unknown_internal_or_hung(
    demo_store: DemoStore,
    tmp_path: Path,
    fresh_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logreg = demo_store.metas["demo-logreg"]
    target = Target("demo", logreg.n_features, logreg.sha256)
    # Both log into one database, as in a deployment.
    evaluator = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root))
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, fresh_db))
    create_seed_experiment(evaluator.target, TOKEN, target)
    fuzzer = Fuzzer(gw.target, evaluator.target, TOKEN, target, seed=15)
    caplog.set_level(logging.WARNING)
    try:
        report = fuzzer.run(CALLS)
    finally:
        fuzzer.close()
        gw.close()
        evaluator.close()
    assert report.failed == 0, "\n".join(
        [
            f"{report.failed} bad calls of {report.calls}:",
            *map(str, report.kinds.items()),
            *report.failures,
        ]
    )
    assert report.healthy_after == {
        "native/Predict": "OK",
        "oip/ModelInfer": "OK",
        "admin/ListExperiments": "OK",
    }
    methods = set(report.by_method)
    for method in ("Predict", "PredictBatch", "PredictStream", "PredictBatchStream",
                   "RecordOutcome"):  # fmt: skip
        assert f"native/{method}" in methods
    for method in ("ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady",
                   "ServerMetadata"):  # fmt: skip
        assert f"oip/{method}" in methods
    assert {m for m in methods if m.startswith("admin/")} >= {
        "admin/CreateExperiment", "admin/ListExperiments", "admin/GetExperiment",
        "admin/Promote", "admin/Rollback", "admin/Pause", "admin/Resume", "admin/Archive",
        "admin/Unarchive", "admin/Gateways", "admin/StreamConfig",
    }  # fmt: skip
    # Most mutations are caught as bad input; some still answer OK.
    codes = {code for counts in report.by_method.values() for code in counts}
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"} <= codes
    # Garbage costs no traceback in the log.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks == [], tracebacks[0].getMessage()
