"""Inference hot path: onnxruntime per demo model (1 row, 1,000 rows), the data plane's
single-row path (route + run), the codec pieces, and everything Predict does between protobuf
parsing and the wire, all without the network.

Numbers: ``.venv/bin/pytest benchmarks/test_bench_inference.py --benchmark-enable``. With the
project default ``--benchmark-disable`` each case runs once, as a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.settings import GatewaySettings
from abgate.v1 import gateway_pb2 as pb
from converters.demo import load_demo_holdout, train_demo_models, write_demo_config
from gateway import codec
from gateway.config import load_config_file
from gateway.control import ControlPlane
from gateway.dataplane import DataPlane, ExperimentRuntime, Prediction
from gateway.modelstore import ModelMetadata, ModelStore
from gateway.oip import OipServicer
from gateway.server import GatewayServer
from gateway.servicer import GatewayServicer
from gateway.variants import SessionOptions, Variant, VariantCache

MODELS = ("demo-logreg", "demo-forest", "demo-gbdt")


@dataclass(frozen=True)
class Demo:
    root: Path
    metas: dict[str, ModelMetadata]
    config: Path
    X: np.ndarray


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("bench-models")
    metas = {m.id: m for m in train_demo_models(ModelStore(root))}
    config = write_demo_config(root / "experiments.toml", list(metas.values()))
    X, _ = load_demo_holdout(root)
    return Demo(root, metas, config, X)


@pytest.fixture(scope="module")
def dataplane(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> DataPlane:
    """The data plane exactly as the gateway builds it (control plane, default sessions)."""
    store = ModelStore(demo.root)
    dp = DataPlane()
    control = ControlPlane(
        dp, store, VariantCache(store, SessionOptions()), tmp_path_factory.mktemp("bench-state")
    )
    control.apply(load_config_file(demo.config))
    return dp


def _row(demo: Demo) -> np.ndarray:
    return np.ascontiguousarray(demo.X[:1], dtype="<f4")


def _variant(demo: Demo, model_id: str) -> Variant:
    meta = demo.metas[model_id]
    v = Variant(meta, ModelStore(demo.root).load_bytes(meta.sha256), SessionOptions())
    v.warm_up()
    return v


@pytest.mark.parametrize("model_id", MODELS)
def test_bench_infer_one_row(benchmark: Any, demo: Demo, model_id: str) -> None:
    v = _variant(demo, model_id)
    labels, scores = benchmark(v.run, _row(demo))
    assert labels.shape == (1,) and scores.shape == (1, 2)


@pytest.mark.parametrize("model_id", MODELS)
def test_bench_infer_1000_rows(benchmark: Any, demo: Demo, model_id: str) -> None:
    v = _variant(demo, model_id)
    rows = np.ascontiguousarray(demo.X[np.arange(1000) % len(demo.X)])
    labels, scores = benchmark(v.run, rows)
    assert labels.shape == (1000,) and scores.shape == (1000, 2)
    # The batch answers what the rows answer one at a time.
    one_labels, _ = v.run(rows[:1])
    assert labels[0] == one_labels[0]


def test_bench_dataplane_predict_row(benchmark: Any, demo: Demo, dataplane: DataPlane) -> None:
    """Routing (hash → bucket → arm) plus the arm's model on one row."""
    exp: ExperimentRuntime = dataplane.experiment("demo")
    row = _row(demo)
    p: Prediction = benchmark(dataplane.predict_row, exp, "bench-user", row, "")
    assert p.arm.name in {"control", "treatment"} and len(p.scores) == 2
    assert p.request_id and p.bucket == dataplane.route(exp, "bench-user")[0]


def test_bench_decode_row(benchmark: Any, demo: Demo) -> None:
    tensor = codec.encode_tensor(demo.X[0])
    row = benchmark(codec.decode_row, tensor, 30)
    assert row.shape == (1, 30) and row.dtype == np.float32


def test_bench_encode_prediction(benchmark: Any, demo: Demo, dataplane: DataPlane) -> None:
    """The answer as a PredictResponse message, serialized (the general codec path)."""
    exp = dataplane.experiment("demo")
    p = dataplane.predict_row(exp, "bench-user", _row(demo), "")

    def encode() -> bytes:
        return codec.encode_prediction(p).SerializeToString()

    raw = benchmark(encode)
    assert pb.PredictResponse.FromString(raw).request_id == p.request_id


def test_bench_encode_prediction_raw(benchmark: Any, demo: Demo, dataplane: DataPlane) -> None:
    """The hand-encoded answer Predict actually sends; same bytes as protobuf's when parsed."""
    exp = dataplane.experiment("demo")
    bucket, arm = dataplane.route(exp, "bench-user")
    labels, scores = arm.variant.run(_row(demo))
    label = int(labels[0])
    raw = benchmark(
        codec.encode_prediction_raw, arm.response_prefix, "rid-1", label, scores[0], bucket
    )
    p = dataplane.prediction(exp, arm, bucket, label, scores[0], "rid-1")
    assert pb.PredictResponse.FromString(raw) == codec.encode_prediction(p)


def test_bench_decode_and_encode(benchmark: Any, demo: Demo, dataplane: DataPlane) -> None:
    """codec.decode_row + codec.encode_prediction around a prediction computed once."""
    exp = dataplane.experiment("demo")
    tensor = codec.encode_tensor(demo.X[0])
    p = dataplane.predict_row(exp, "bench-user", _row(demo), "rid-1")

    def roundtrip() -> bytes:
        codec.decode_row(tensor, exp.n_features)
        return codec.encode_prediction(p).SerializeToString()

    assert benchmark(roundtrip)


@pytest.fixture(scope="module")
def servicer(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServicer]:
    settings = GatewaySettings(
        config=demo.config,
        model_store=demo.root,
        state_dir=tmp_path_factory.mktemp("bench-server-state"),
        watch_interval=0,
        log_predictions=False,
    )
    server = GatewayServer(settings)
    asyncio.run(server.load_initial_config())
    yield GatewayServicer(server.dataplane, server.executor, max_batch_rows=10, offload_rows=10)
    server.executor.shutdown()


def test_bench_gateway_single_row_path(
    benchmark: Any, demo: Demo, servicer: GatewayServicer
) -> None:
    """Everything Predict does between protobuf parsing and the wire (validate, decode, route,
    run, encode), prediction logging off."""
    request = pb.PredictRequest(
        experiment="demo", user_id="bench-user", features=codec.encode_tensor(demo.X[0])
    )
    raw, request_id = benchmark(servicer._predict, request)
    answer = pb.PredictResponse.FromString(raw)
    assert answer.arm in {"control", "treatment"} and answer.request_id == request_id


@pytest.fixture(scope="module")
def oip_servicer(demo: Demo, servicer: GatewayServicer) -> OipServicer:
    # On the same server and data plane as ``servicer``, prediction logging off as there.
    return OipServicer(servicer._dp, servicer._executor, max_batch_rows=10, offload_rows=10)


def _completed(coro: Coroutine[Any, Any, Any]) -> Any:
    """The value of a coroutine that finishes without suspending (one row runs inline), so an
    event loop's own cost stays out of the figure."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the call suspended: it did not run inline")


class _NoMetadata:
    def invocation_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_bench_gateway_oip_single_row_path(
    benchmark: Any, demo: Demo, oip_servicer: OipServicer, raw: bool
) -> None:
    """Everything OIP V2 ModelInfer does between protobuf parsing and the wire (the same steps as
    ``test_bench_gateway_single_row_path``), with typed ``fp32_contents`` as KServe clients send
    them, or ``raw_input_contents``."""
    row = np.ascontiguousarray(demo.X[0], dtype="<f4")
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[1, row.size]
    )
    request = oip.ModelInferRequest(model_name="demo", inputs=[tensor])
    if raw:
        request.raw_input_contents.append(row.tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(row.tolist())
    request.outputs.add(name="probabilities")
    request.parameters["user_id"].string_param = "bench-user"
    context: Any = _NoMetadata()
    answer = benchmark(lambda: _completed(oip_servicer._infer(request, context)))
    parsed = oip.ModelInferResponse.FromString(answer)
    assert parsed.parameters["arm"].string_param in {"control", "treatment"}
    assert parsed.outputs[0].name == "probabilities"
