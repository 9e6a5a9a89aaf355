"""Triton's gRPC extensions on the gateway (ModelConfig, RepositoryIndex, ModelStatistics,
ModelStreamInfer) through our own stubs; ``test_oip.py`` calls them with tritonclient too."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.oip.v2 import model_config_pb2 as mc
from converters.demo import DEMO_EXPERIMENTS
from gateway.hashing import NUM_BUCKETS
from gateway.variants import Variant
from tests.conftest import DemoStore, InProcessGateway, gateway_settings
from tests.gateway.test_oip import infer_request, logged_rows, oip_stub, output, params

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def test_model_config(gateway: InProcessGateway, demo_store: DemoStore) -> None:
    stub = oip_stub(gateway)
    n_features = demo_store.X.shape[1]
    for name, (_, arms) in DEMO_EXPERIMENTS.items():
        config = stub.ModelConfig(oip.ModelConfigRequest(name=name), timeout=5).config
        assert (config.name, config.platform, config.backend) == (
            name,
            "onnxruntime_onnx",
            "onnxruntime",
        )
        assert config.max_batch_size == gateway.server.settings.max_batch_rows
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("features", mc.TYPE_FP32, [n_features])
        ]
        assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
            ("label", mc.TYPE_INT64, []),
            ("probabilities", mc.TYPE_FP32, [2]),
        ]
        assert [(g.name, g.kind, g.count) for g in config.instance_group] == [
            (arm, mc.ModelInstanceGroup.KIND_CPU, 1) for arm, _, _ in arms
        ]
        p = {k: v.string_value for k, v in config.parameters.items()}
        assert p["arms"] == ",".join(arm for arm, _, _ in arms)
        assert p["buckets"] == str(NUM_BUCKETS)
        total = sum(w for _, _, w in arms)
        shas = {m.id: m.sha256 for m in demo_store.metas.values()}
        for arm, model_id, weight in arms:
            model, sha, buckets = p[f"arm.{arm}"].split(" ")
            assert model.split(":")[0] == model_id and sha == f"sha256={shas[model_id]}"
            # The share of the 10,000 buckets routed to the arm is its weight's (± rounding).
            assert abs(int(buckets.removeprefix("buckets=")) - NUM_BUCKETS * weight / total) <= 1
    for request, code, field in [
        (oip.ModelConfigRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "model_name"),
        (oip.ModelConfigRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "model_name"),
        (oip.ModelConfigRequest(name="demo", version="1"), grpc.StatusCode.INVALID_ARGUMENT,
         "model_version"),
    ]:  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelConfig(request, timeout=5)
        assert err.value.code() == code and field in (err.value.details() or ""), err.value


def test_repository_index(gateway: InProcessGateway, demo_store: DemoStore, tmp_path: Path) -> None:
    stub = oip_stub(gateway)
    want = [(name, "", "READY", "") for name in sorted(DEMO_EXPERIMENTS)]
    for ready in (False, True):
        index = stub.RepositoryIndex(oip.RepositoryIndexRequest(ready=ready), timeout=5)
        assert [(m.name, m.version, m.state, m.reason) for m in index.models] == want
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryIndex(oip.RepositoryIndexRequest(repository_name="models"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "repository_name" in (err.value.details() or "")
    # Before a config is loaded: nothing to list, not an error.
    bare = InProcessGateway(gateway_settings(demo_store, tmp_path / "bare", config=None))
    try:
        assert list(oip_stub(bare).RepositoryIndex(oip.RepositoryIndexRequest()).models) == []
        with pytest.raises(grpc.RpcError) as err:
            oip_stub(bare).ModelConfig(oip.ModelConfigRequest(name="demo"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        bare.close()


def _arm_stats(stub: object, name: str, arm: str) -> oip.ModelStatistics:
    answer = stub.ModelStatistics(  # type: ignore[attr-defined]
        oip.ModelStatisticsRequest(name=name, version=arm), timeout=5
    )
    (entry,) = answer.model_stats
    return entry


def _wait_for(stub: object, name: str, arm: str, ok: int, fail: int) -> oip.ModelStatistics:
    """The arm's statistics once they count ``ok`` answered and ``fail`` failed rows (they
    are counted as the log rows leave memory, a moment after the answers)."""
    deadline = time.monotonic() + 20
    while True:
        s = _arm_stats(stub, name, arm)
        done = (s.inference_stats.success.count, s.inference_stats.fail.count) == (ok, fail)
        if done or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def test_model_statistics_count_the_logged_rows(
    gateway: InProcessGateway, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = oip_stub(gateway)
    X = demo_store.X
    everything = stub.ModelStatistics(oip.ModelStatisticsRequest(), timeout=5).model_stats
    assert [(s.name, s.version, s.inference_count) for s in everything] == [
        (name, arm, 0)
        for name in sorted(DEMO_EXPERIMENTS)
        for arm, _, _ in DEMO_EXPERIMENTS[name][1]
    ]
    started_ms = time.time() * 1000
    arm = params(stub.ModelInfer(infer_request(X[:3], "stats-user"), timeout=5))["arm"]
    stub.ModelInfer(infer_request(X[3:4], "stats-user"), timeout=5)
    s = _wait_for(stub, "demo", arm, 4, 0)
    assert (s.name, s.version, s.inference_count, s.execution_count) == ("demo", arm, 4, 4)
    assert s.inference_stats.success.count == 4 and s.inference_stats.success.ns > 0
    assert started_ms - 1 <= s.last_inference <= time.time() * 1000 + 1
    # A model failure is counted as failed rows.
    monkeypatch.setattr(Variant, "run", lambda self, rows: 1 / 0)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(infer_request(X[:2], "stats-user"), timeout=5)
    monkeypatch.undo()
    s = _wait_for(stub, "demo", arm, 4, 2)
    assert (s.inference_count, s.inference_stats.fail.count) == (4, 2)
    assert s.inference_stats.fail.ns > 0
    # The other arm saw nothing; the other experiment neither.
    other = next(a for a, _, _ in DEMO_EXPERIMENTS["demo"][1] if a != arm)
    assert _arm_stats(stub, "demo", other).inference_count == 0
    by_name = stub.ModelStatistics(oip.ModelStatisticsRequest(name="demo"), timeout=5)
    assert {e.version: e.inference_count for e in by_name.model_stats} == {arm: 4, other: 0}
    for request, code, field in [
        (oip.ModelStatisticsRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "model_name"),
        (oip.ModelStatisticsRequest(name="demo", version="nope"), grpc.StatusCode.NOT_FOUND,
         "version"),
    ]:  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelStatistics(request, timeout=5)
        assert err.value.code() == code and field in (err.value.details() or ""), err.value


def _stream_answer(raw: bytes) -> oip.ModelStreamInferResponse:
    return oip.ModelStreamInferResponse.FromString(raw)


def test_stream_infer_answers_in_order_and_a_bad_message_fails_alone(
    gateway: InProcessGateway, demo_store: DemoStore
) -> None:
    X = demo_store.X
    bad = X[:1].copy()
    bad[0, 0] = np.nan
    messages = [
        infer_request(X[:2], "stream-user", request_id="s-1").SerializeToString(),
        infer_request(bad, "stream-user", request_id="s-bad").SerializeToString(),
        b"\xff\xff\xff",  # does not parse
        infer_request(X[:1], None, request_id="s-nouser").SerializeToString(),
        infer_request(X[2:3], "stream-user", request_id="s-2", raw=False).SerializeToString(),
        infer_request(X[:2], "stream-user", request_id="s-1").SerializeToString(),  # a retry
    ]
    call = gateway.channel.stream_stream(STREAM)
    answers = [_stream_answer(a) for a in call(iter(messages), timeout=10)]
    assert [a.error_message.split(":")[0] for a in answers] == [
        "", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "", ""
    ]  # fmt: skip
    assert "features: row 0 contains NaN" in answers[1].error_message
    assert (answers[1].infer_response.id, answers[1].infer_response.model_name) == ("s-bad", "demo")
    assert "undecodable" in answers[2].error_message
    assert "user_id" in answers[3].error_message
    # The answers are ModelInfer's: the same arm and outputs as a unary call of that user.
    unary = oip_stub(gateway).ModelInfer(infer_request(X[:3], "stream-user"), timeout=5)
    first, typed, retry = answers[0].infer_response, answers[4].infer_response, answers[5]
    assert first.id == "s-1" and params(first)["arm"] == params(unary)["arm"]
    assert output(first, "label").tolist() == output(unary, "label")[:2].tolist()
    assert output(typed, "label").tolist() == output(unary, "label")[2:].tolist()
    assert retry.infer_response == first  # the original answer, not run again
    rows = logged_rows(gateway.server.settings.database_url, ["s-1:0", "s-1:1", "s-2"])
    assert sorted(rows) == ["s-1:0", "s-1:1", "s-2"]
