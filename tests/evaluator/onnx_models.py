"""Hand-built ONNX classifiers with the demo models' signature (float32 [N, n] in; int64 labels
and float32 [N, 2] probabilities out), for behaviours scikit-learn models never show."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _model(nodes: list[onnx.NodeProto], init: list[onnx.TensorProto], n_features: int) -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph(nodes, "test-model", [x], [label, probs], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def faulty_model(n_features: int) -> bytes:
    """A classifier that loads and warms up (on zeros) but fails on real rows: it reshapes its
    input to [-1, n+7] whenever any feature exceeds 100, which no 1-row input fits."""
    init = [
        helper.make_tensor("hundred", TensorProto.FLOAT, [], [100.0]),
        helper.make_tensor("seven", TensorProto.INT64, [1], [7]),
        helper.make_tensor("n", TensorProto.INT64, [1], [n_features]),
        helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("w", TensorProto.FLOAT, [n_features, 2], [0.0] * (2 * n_features)),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["mx"], keepdims=0),
        helper.make_node("Greater", ["mx", "hundred"], ["big"]),
        helper.make_node("Cast", ["big"], ["big_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["big_i", "seven"], ["extra"]),
        helper.make_node("Add", ["n", "extra"], ["cols"]),
        helper.make_node("Concat", ["minus1", "cols"], ["shape"], axis=0),
        helper.make_node("Reshape", ["X", "shape"], ["Y"]),
        helper.make_node("MatMul", ["Y", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    return _model(nodes, init, n_features)


def constant_model(n_features: int, label: int = 0) -> bytes:
    """Always predicts ``label`` (probability ~0.99): a deliberately poor control."""
    init = [
        helper.make_tensor("w", TensorProto.FLOAT, [n_features, 2], [0.0] * (2 * n_features)),
        helper.make_tensor("b", TensorProto.FLOAT, [2], [5.0, 0.0] if label == 0 else [0.0, 5.0]),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    return _model(nodes, init, n_features)


def register(store_root: Path, tmp_path: Path, name: str, data: bytes) -> str:
    """Register ONNX bytes under ``name`` with the real CLI (``abgate models register``);
    returns the sha256 the store gives them."""
    from abgate.cli import main as abgate_main
    from gateway.modelstore import ModelStore

    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    args = ["models", "register", "--store", str(store_root), "--onnx", str(path), "--id", name]
    assert abgate_main(args) == 0
    return ModelStore(store_root).resolve(name).sha256
