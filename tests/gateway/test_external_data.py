"""ONNX external data cannot bypass the sha256: a model whose tensors live in another file is
refused by ``abgate models register`` (exit 2) and by the gateway when loading (ConfigError
naming the model), wherever the tensor hides (initializer, TENSOR attribute, subgraph,
function); and onnxruntime, given the bytes, is pointed at a directory that cannot exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import gateway.variants
from abgate.cli import main as abgate_main
from abgate.errors import ConfigError
from gateway.config import load_config_file
from gateway.modelstore import ModelMetadata, ModelStore, external_tensors, sha256_hex
from tests.conftest import DemoStore, InProcessGateway, gateway_settings

N = 30  # features; a [30, 2] weight is big enough that no graph optimisation reads it early


def _graph(nodes: list[onnx.NodeProto], init: list[onnx.TensorProto]) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, N])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    return helper.make_graph(nodes, "g", [x], [label, probs], init)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _externalize(tensor: onnx.TensorProto, location: str) -> None:
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)


def classifier_with_external_weights(directory: Path) -> bytes:
    """A logistic regression whose weight matrix ``w`` lives in ``weights.bin`` (relative):
    the label follows whatever that file holds, the ONNX bytes stay the same."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [N, 2], [0.0] * (2 * N))
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], [1.0, 0.0])
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    model = _model(_graph(nodes, [w, b]))
    _externalize(model.graph.initializer[0], "weights.bin")
    (directory / "weights.bin").write_bytes(np.zeros((N, 2), "<f4").tobytes())
    return model.SerializeToString()


def test_register_refuses_a_model_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # where onnxruntime would look for weights.bin
    (tmp_path / "ext.onnx").write_bytes(classifier_with_external_weights(tmp_path))
    code = abgate_main(
        ["models", "register", "--store", "store", "--onnx", "ext.onnx", "--id", "ext"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "abgate: error: --onnx ext.onnx: 1 tensor(s) keep their data in an external file "
        "('w'); only self-contained ONNX models are served (save without external data)\n"
    )
    assert ModelStore(tmp_path / "store").list() == []


def test_the_gateway_refuses_to_load_one(
    demo_store: DemoStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written by hand (or by an older abgate) holds it: the config naming it is
    refused, the one before keeps serving."""
    monkeypatch.chdir(tmp_path)
    root = shutil.copytree(demo_store.root, tmp_path / "models")  # the shared one stays clean
    # ModelStore.put refuses it, so as an older abgate or a script would have: by hand.
    data = classifier_with_external_weights(tmp_path)
    meta = ModelMetadata(
        sha256=sha256_hex(data), id="ext-weights", version="1", input_name="X", n_features=N,
        feature_names=tuple(f"f{i}" for i in range(N)), label_output="label",
        scores_output="probabilities", classes=(0, 1), opset=17, source="test",
        parity_max_abs_diff=0.0, parity_rows=0,
    )  # fmt: skip
    (root / "objects" / f"{meta.sha256}.onnx").write_bytes(data)
    (root / "meta" / f"{meta.sha256}.json").write_text(json.dumps(meta.to_dict()))
    assert ModelStore(root).get(meta.sha256) == meta
    logreg = demo_store.metas["demo-logreg"].sha256
    path = tmp_path / "exp.json"

    def config(version: int, model: str) -> Path:
        arm = {"name": "only", "model": model, "weight": 100}
        path.write_text(
            json.dumps({"version": version, "experiments": [{"name": "exp", "arms": [arm]}]})
        )
        return path

    settings = gateway_settings(demo_store, tmp_path, config=config(1, logreg), model_store=root)
    gw = InProcessGateway(settings)
    try:
        config(2, meta.sha256)
        assert not gw.call(gw.server.reload())
        with pytest.raises(ConfigError) as info:
            gw.server.control.apply(load_config_file(path))
        assert str(info.value) == (
            f"model ext-weights:{meta.version} ({meta.sha256[:12]}) is refused: 1 tensor(s) "
            "keep their data in an external file ('w'); only self-contained ONNX models are "
            "served (save without external data)"
        )
        snapshot = gw.server.dataplane.snapshot
        assert snapshot is not None and snapshot.version == 1
        assert meta.sha256 not in gw.server.variants.loaded()
    finally:
        gw.close()


def test_onnxruntime_never_reads_an_external_file_even_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second lock: with the check switched off, the session still cannot open it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gateway.variants, "check_self_contained", lambda data: None)
    data = classifier_with_external_weights(tmp_path)
    meta = ModelMetadata(
        sha256="0" * 64, id="m", version="1", input_name="X", n_features=N, feature_names=(),
        label_output="label", scores_output="probabilities", classes=(0, 1), opset=17,
        source="test", parity_max_abs_diff=0.0, parity_rows=0,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="does not load"):
        gateway.variants.Variant(meta, data, gateway.variants.SessionOptions())


def test_external_tensors_are_found_wherever_they_hide(demo_store: DemoStore) -> None:
    def tensor(name: str) -> onnx.TensorProto:
        t = helper.make_tensor(name, TensorProto.FLOAT, [2], [1.0, 2.0])
        _externalize(t, f"{name}.bin")
        return t

    then = helper.make_graph(
        [helper.make_node("Identity", ["inner"], ["y"])], "then", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [tensor("inner")],
    )  # fmt: skip
    nodes = [
        helper.make_node("Constant", [], ["c"], value=tensor("constant")),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then),
    ]
    model = _model(_graph(nodes, [tensor("init")]))
    sparse = model.graph.sparse_initializer.add()
    sparse.values.CopyFrom(tensor("sparse"))
    sparse.indices.CopyFrom(helper.make_tensor("idx", TensorProto.INT64, [1], [0]))
    function = model.functions.add(name="f", domain="d")
    attr = function.attribute_proto.add(name="a", type=onnx.AttributeProto.TENSORS)
    attr.tensors.append(tensor("in_function"))
    only_entries = model.graph.initializer.add(name="entries_only")  # no data_location
    only_entries.external_data.add(key="location", value="x.bin")
    found = external_tensors(model.SerializeToString())
    assert sorted(found) == sorted(
        ["init", "constant", "inner", "inner", "sparse", "in_function", "entries_only"]
    )
    # Self-contained models pass, every demo model among them.
    assert external_tensors(_model(_graph([], [])).SerializeToString()) == []
    store = ModelStore(demo_store.root)
    for meta in demo_store.metas.values():
        assert external_tensors(store.load_bytes(meta.sha256)) == [], meta.id


def test_the_skeleton_covers_every_path_to_a_tensor_in_onnx_proto() -> None:
    """Every field of onnx.proto through which a TensorProto can be reached from ModelProto
    is in the skeleton, with the same number (a new onnx release that adds one fails here)."""
    from gateway.modelstore import _SKELETON

    def reaches_tensor(message: object, seen: frozenset[str] = frozenset()) -> bool:
        name = message.full_name  # type: ignore[attr-defined]
        if name == "onnx.TensorProto":
            return True
        if name in seen:
            return False
        return any(
            f.message_type is not None and reaches_tensor(f.message_type, seen | {name})
            for f in message.fields  # type: ignore[attr-defined]
        )

    paths: set[tuple[str, int]] = set()
    todo, done = [onnx.ModelProto.DESCRIPTOR], set()
    while todo:
        message = todo.pop()
        if message.full_name in done or message.full_name == "onnx.TensorProto":
            continue
        done.add(message.full_name)
        for f in message.fields:
            if f.message_type is not None and reaches_tensor(f.message_type):
                paths.add((message.name.removesuffix("Proto"), f.number))
                todo.append(f.message_type)
    skeleton = {(m, number) for m, fields in _SKELETON.items() for _, number, typ in fields
                if typ not in ("bytes", "int32")}  # fmt: skip
    assert paths == skeleton
    tensor = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert {(name, number) for name, number, _ in _SKELETON["Tensor"]} == {
        (f, tensor[f].number) for f in ("name", "external_data", "data_location")
    }
