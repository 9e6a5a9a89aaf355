"""Inference hot path: onnxruntime per demo model (1 row, 1,000 rows) and the gateway's
single-row path (decode → route → run → encode) without the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.settings import GatewaySettings
from abgate.v1 import gateway_pb2 as pb
from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
from gateway import codec
from gateway.modelstore import ModelStore
from gateway.server import GatewayServer
from gateway.servicer import GatewayServicer
from gateway.variants import SessionOptions, Variant

MODELS = ("demo-logreg", "demo-forest", "demo-gbdt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], np.ndarray]:
    root = tmp_path_factory.mktemp("bench-models")
    metas = {m.id: m for m in train_demo_models(ModelStore(root))}
    write_demo_config(root / "experiments.toml", list(metas.values()))
    X, _ = load_demo_holdout(root)
    return root, metas, X


def _variant(demo: tuple[Path, dict[str, Any], np.ndarray], model_id: str) -> Variant:
    root, metas, _ = demo
    meta = metas[model_id]
    v = Variant(meta, ModelStore(root).load_bytes(meta.sha256), SessionOptions())
    v.warm_up()
    return v


@pytest.mark.parametrize("model_id", MODELS)
def test_bench_infer_one_row(benchmark: Any, demo: Any, model_id: str) -> None:
    v = _variant(demo, model_id)
    row = np.ascontiguousarray(demo[2][:1])
    labels, scores = benchmark(v.run, row)
    assert labels.shape == (1,) and scores.shape == (1, 2)


@pytest.mark.parametrize("model_id", MODELS)
def test_bench_infer_1000_rows(benchmark: Any, demo: Any, model_id: str) -> None:
    v = _variant(demo, model_id)
    X = demo[2]
    rows = np.ascontiguousarray(X[np.arange(1000) % len(X)])
    labels, scores = benchmark(v.run, rows)
    assert labels.shape == (1000,) and scores.shape == (1000, 2)


def test_bench_gateway_single_row_path(benchmark: Any, demo: Any, tmp_path: Path) -> None:
    """Everything Predict does between protobuf parsing and the wire."""
    import asyncio

    root, _, X = demo
    settings = GatewaySettings(
        config=root / "experiments.toml",
        model_store=root,
        state_dir=tmp_path,
        watch_interval=0,
        log_predictions=False,
    )
    server = GatewayServer(settings)
    asyncio.run(server.load_initial_config())
    servicer = GatewayServicer(
        server.dataplane, server.executor, max_batch_rows=10, offload_rows=10
    )
    row = np.ascontiguousarray(X[0], dtype="<f4")
    request = pb.PredictRequest(
        experiment="demo", user_id="bench-user", features=pb.Tensor(raw=row.tobytes())
    )
    raw, _ = benchmark(servicer._predict, request)
    assert pb.PredictResponse.FromString(raw).arm in {"control", "treatment"}
    server.executor.shutdown()


def test_bench_decode_row(benchmark: Any, demo: Any) -> None:
    row = np.ascontiguousarray(demo[2][0], dtype="<f4")
    tensor = pb.Tensor(shape=[30], raw=row.tobytes(), datatype="FP32")
    assert benchmark(codec.decode_row, tensor, 30).shape == (1, 30)
