"""feature_sample_rate through a real evaluator: validated on create and update (INVALID_ARGUMENT
outside [0, 1] or NaN, nothing written), stored with the experiment's version, shown by
``abgate experiments show`` (text and ``--json --full``), and streamed to a gateway, which then
captures the features of that share of its predictions."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import grpc
import numpy as np

from abgate.v1 import control_pb2 as cpb
from abgate.v1 import gateway_pb2 as pb
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, fetch, rpc_code
from tests.evaluator.test_control_plane import abgate

BAD = (1.5, -0.1, math.nan, math.inf)


def shas(demo_store: DemoStore) -> tuple[str, str]:
    return demo_store.metas["demo-logreg"].sha256, demo_store.metas["demo-gbdt"].sha256


def test_bad_rates_are_refused_on_create_and_update(
    evaluator: InProcessEvaluator, demo_store: DemoStore
) -> None:
    control, treatment = shas(demo_store)
    for rate in BAD:
        d = ab_definition("exp", control, treatment, feature_sample_rate=rate)
        code = rpc_code(
            evaluator.admin.call, "CreateExperiment", cpb.CreateExperimentRequest(definition=d)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, rate
    assert evaluator.admin.call("ListExperiments", cpb.ListExperimentsRequest()).experiments == []

    d = ab_definition("exp", control, treatment, feature_sample_rate=0.25)
    view = evaluator.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=d))
    assert view.definition.feature_sample_rate == 0.25
    for rate in BAD:
        req = cpb.ExperimentRequest(name="exp", feature_sample_rate=rate)
        code = rpc_code(evaluator.admin.call, "UpdateExperiment", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, rate
    # An update that names nothing to change is refused too.
    assert (
        rpc_code(evaluator.admin.call, "UpdateExperiment", cpb.ExperimentRequest(name="exp"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    shown = evaluator.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
    assert shown.version == view.version and shown.definition.feature_sample_rate == 0.25

    updated = evaluator.admin.call(
        "UpdateExperiment", cpb.ExperimentRequest(name="exp", feature_sample_rate=0.0, actor="t")
    )
    assert updated.version == view.version + 1 and updated.definition.feature_sample_rate == 0.0
    # Stored with the version, as the other fields are.
    stored = fetch(
        evaluator.settings.database_url,
        "SELECT version, (config->>'feature_sample_rate')::float8 AS rate "
        "FROM experiment_versions WHERE experiment = 'exp' ORDER BY version",
    )
    assert [(r["version"], r["rate"]) for r in stored] == [
        (view.version, 0.25),
        (view.version + 1, 0.0),
    ]


def test_cli_create_update_show(evaluator: InProcessEvaluator, demo_store: DemoStore) -> None:
    control, treatment = shas(demo_store)
    target = ("--evaluator", evaluator.target)
    r = abgate("experiments", "create", *target, "--name", "cap",
               "--arm", f"control={control}", "--arm", f"treatment={treatment}",
               "--feature-sample-rate", "2")  # fmt: skip
    assert r.returncode != 0 and "INVALID_ARGUMENT" in r.stderr
    assert "feature_sample_rate" in r.stderr
    r = abgate("experiments", "create", *target, "--name", "cap",
               "--arm", f"control={control}", "--arm", f"treatment={treatment}",
               "--feature-sample-rate", "0.1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "feature capture: 0.1 of served predictions" in r.stdout
    r = abgate("experiments", "update", "cap", *target, "--feature-sample-rate", "nan")
    assert r.returncode != 0 and "INVALID_ARGUMENT" in r.stderr
    r = abgate("experiments", "update", "cap", *target, "--feature-sample-rate", "0.5")
    assert r.returncode == 0, r.stderr
    r = abgate("experiments", "show", "cap", *target)
    assert r.returncode == 0 and "feature capture: 0.5 of served predictions" in r.stdout
    r = abgate("experiments", "show", "cap", *target, "--json", "--full")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["definition"]["feature_sample_rate"] == 0.5


def test_the_snapshot_carries_the_rate_to_the_gateway(
    evaluator: InProcessEvaluator, demo_store: DemoStore, tmp_path: Path
) -> None:
    control, treatment = shas(demo_store)
    d = ab_definition("exp", control, treatment, feature_sample_rate=1.0)
    evaluator.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=d))
    url = evaluator.settings.database_url
    settings = gateway_settings(
        demo_store, tmp_path, url, config=None, evaluator=evaluator.target, evaluator_token=TOKEN
    )
    gw = InProcessGateway(settings)
    try:

        def rate() -> float | None:
            snap = gw.server.dataplane.snapshot
            exp = snap.experiments.get("exp") if snap is not None else None
            return exp.feature_sample_rate if exp is not None else None

        deadline = time.monotonic() + 20
        while rate() != 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rate() == 1.0
        row = np.ascontiguousarray(demo_store.X[:1], dtype="<f4")
        tensor = pb.Tensor(shape=list(row.shape), raw=row.tobytes())
        for i in range(10):
            gw.stub.Predict(
                pb.PredictRequest(experiment="exp", user_id=f"u{i}", features=tensor,
                                  request_id=f"r{i}"),
                timeout=10,
            )  # fmt: skip
        # Capture off again: the next snapshot stops it.
        evaluator.admin.call(
            "UpdateExperiment", cpb.ExperimentRequest(name="exp", feature_sample_rate=0.0)
        )
        deadline = time.monotonic() + 20
        while rate() != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rate() == 0.0
        for i in range(10, 20):
            gw.stub.Predict(
                pb.PredictRequest(experiment="exp", user_id=f"u{i}", features=tensor,
                                  request_id=f"r{i}"),
                timeout=10,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            n = fetch(url, "SELECT count(*) AS n FROM predictions WHERE experiment = 'exp'")
            if n[0]["n"] >= 20:
                break
            time.sleep(0.1)
    finally:
        gw.close()
    got = fetch(url, "SELECT request_id, features FROM prediction_features ORDER BY request_id")
    assert sorted(r["request_id"] for r in got) == sorted(f"r{i}" for i in range(10))
    assert all(
        np.asarray(r["features"], dtype=np.float32).tobytes() == row[0].tobytes() for r in got
    )
