"""A shadow model compared pairwise with the served one, end to end: gateway mirrors, logs
both under one request id, outcomes arrive, the evaluator's tick aggregates pairs, and
``abgate experiments show`` reports agreement, deltas and McNemar's test — with exactly the
counts the client saw."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from abgate.client import GatewayClient
from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.onnx_models import constant_model, register


def test_shadow_comparison_reported_by_experiments_show(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    constant = register(
        demo_store.root, tmp_path, "constant", constant_model(demo_store.X.shape[1])
    )
    shas = {m.id: m.sha256 for m in demo_store.metas.values()}
    ev = InProcessEvaluator(
        evaluator_settings(fresh_db, demo_store.root, settle=0.0, metrics_listen="127.0.0.1:0")
    )
    gw: InProcessGateway | None = None
    try:
        definition = ab_definition(
            "exp", shas["demo-logreg"], shas["demo-gbdt"],
            shadows=[cpb.ShadowConfig(name="always-zero", model=constant, sample_rate=1.0)],
        )  # fmt: skip
        created = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=definition)
        )
        settings = gateway_settings(
            demo_store, tmp_path / "gw", fresh_db, config=None, evaluator=ev.target,
            evaluator_token=TOKEN, gateway_id="gw-shadow",
        )  # fmt: skip
        gw = InProcessGateway(settings)
        assert ev.call(ev.server.publisher.wait_acked(created.snapshot_version))

        X, y = demo_store.X, demo_store.y
        served_labels, truths, outcomes = [], [], []
        with GatewayClient(gw.target) as client:
            for i in range(300):
                r = client.predict("exp", f"user-{i}", X[i % len(X)])
                served_labels.append(r["label"])
                truths.append(int(y[i % len(X)]))
                if i % 3:  # two thirds get their label
                    outcomes.append((r["request_id"], float(truths[-1]), ""))
            client.record_outcomes(outcomes)
        mirror = gw.server.mirror
        assert mirror is not None
        deadline = time.monotonic() + 20
        view = created
        shadow: dict = {}
        while time.monotonic() < deadline:
            time.sleep(0.2)
            ev.call(ev.server.tick())
            view = ev.admin.call("GetExperiment", cpb.ExperimentRequest(name="exp"))
            shadow = json.loads(view.details_json)["shadows"]["always-zero"]
            if shadow.get("pairs") == 300 and shadow.get("labelled") == len(outcomes):
                break
        served = np.array(served_labels)
        truth = np.array(truths)
        labelled = np.array([i % 3 != 0 for i in range(300)])
        assert shadow["pairs"] == 300 and shadow["labelled"] == len(outcomes)
        assert shadow["agreement"] == np.mean(served == 0)
        b = int(np.sum(labelled & (served == truth) & (truth != 0)))  # only served right
        c = int(np.sum(labelled & (served != truth) & (truth == 0)))  # only shadow right
        assert shadow["mcnemar"]["served_only_right"] == b
        assert shadow["mcnemar"]["shadow_only_right"] == c
        assert shadow["served_accuracy"] == np.mean(served[labelled] == truth[labelled])
        assert shadow["shadow_accuracy"] == np.mean(truth[labelled] == 0)
        assert shadow["mcnemar"]["p_value"] < 1e-6  # the served models are far better
        assert shadow["score_delta"]["mean"] is not None

        r = subprocess.run(
            [sys.executable, "-m", "abgate", "experiments", "show", "exp",
             "--evaluator", ev.target, "--token", TOKEN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "shadow always-zero: 300 pairs, agreement" in r.stdout
        assert "McNemar p=" in r.stdout

        # The same comparison as Prometheus counters (agreement rate = agreements ÷ pairs).
        url = f"http://127.0.0.1:{ev.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        labels = 'experiment="exp",shadow="always-zero"'
        assert f"abgate_shadow_pairs_total{{{labels}}} 300.0" in text
        agree = float(np.sum(served == 0))
        assert f"abgate_shadow_agreements_total{{{labels}}} {agree}" in text
    finally:
        if gw is not None:
            gw.close()
        ev.close()
