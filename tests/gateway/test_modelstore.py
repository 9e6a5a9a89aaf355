"""The content-addressed store: integrity, references that cannot escape it, versions."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gateway.modelstore import (
    ExternalData,
    InvalidModelRef,
    ModelIntegrityError,
    ModelMetadata,
    ModelNotFound,
    ModelStore,
    NotOnnx,
    sha256_hex,
)
from tests.conftest import DemoStore
from tests.gateway.test_external_data import classifier_with_external_weights


def onnx(name: str) -> bytes:
    """A small ONNX model; ``name`` (its graph's) makes its bytes its own."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], name, [x], [y])
    return helper.make_model(graph).SerializeToString()


META = ModelMetadata(
    sha256="",
    id="m",
    version="",
    input_name="X",
    n_features=2,
    feature_names=("a", "b"),
    label_output="label",
    scores_output="probabilities",
    classes=(0, 1),
    opset=17,
    source="test",
    parity_max_abs_diff=0.0,
    parity_rows=10,
)


def test_put_get_resolve_list(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    one = store.put(onnx("model one"), META)
    assert one.sha256 == sha256_hex(onnx("model one")) and one.version == "1"
    two = store.put(onnx("model two"), META)
    assert two.version == "2"
    again = store.put(onnx("model one"), replace(META, id="other"))
    assert again == one  # idempotent: same bytes, same entry
    named = store.put(onnx("model three"), replace(META, id="n", version="7"))
    assert store.resolve("m") == two
    assert store.resolve("m:1") == one
    assert store.resolve(one.sha256) == one
    assert store.resolve("n:7") == named
    assert [m.sha256 for m in store.list()] == [one.sha256, two.sha256, named.sha256]
    assert store.load_bytes(two.sha256) == onnx("model two")
    with pytest.raises(ModelNotFound):
        store.resolve("m:9")
    with pytest.raises(ModelNotFound):
        store.get("0" * 64)


def test_tampered_bytes_are_detected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    meta = store.put(onnx("original"), META)
    (tmp_path / "objects" / f"{meta.sha256}.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError):
        store.load_bytes(meta.sha256)


def test_symlinked_object_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s")
    meta = store.put(onnx("original"), META)
    obj = tmp_path / "s" / "objects" / f"{meta.sha256}.onnx"
    outside = tmp_path / "outside"
    outside.write_bytes(onnx("original"))
    obj.unlink()
    os.symlink(outside, obj)
    with pytest.raises(ModelIntegrityError, match="regular file"):
        store.load_bytes(meta.sha256)


@pytest.mark.parametrize("ref", ["../etc/passwd", "A" * 64, "abc", "a" * 63, "/tmp/x", "a:b:c/d"])
def test_bad_references_never_become_paths(tmp_path: Path, ref: str) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises((InvalidModelRef, ModelNotFound)):
        store.resolve(ref)
    with pytest.raises(InvalidModelRef):
        store.load_bytes(ref)


def test_bad_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelRef):
        ModelStore(tmp_path).put(onnx("x"), replace(META, id="../x"))


def test_put_refuses_what_is_no_self_contained_onnx_model(tmp_path: Path) -> None:
    """Whoever calls it (a script, a trainer, register): a model is its sha256 alone."""
    store = ModelStore(tmp_path / "s")
    with pytest.raises(NotOnnx, match="does not parse"):
        store.put(b"\xff\xff\xff", META)
    with pytest.raises(NotOnnx, match="no graph"):
        store.put(b"", META)
    with pytest.raises(ExternalData, match=r"1 tensor\(s\) keep their data in an external file"):
        store.put(classifier_with_external_weights(tmp_path), META)
    assert store.list() == []


@pytest.mark.numeric
def test_variant_runs_the_binding_and_answers_as_onnxruntime(demo_store: DemoStore) -> None:
    """Variant.run skips InferenceSession.run's per-call Python checks (it calls the binding
    underneath) and answers exactly as the public API does, for one row and for many: the same
    options and the same input make the same computation, so exactly the same floats."""
    import onnxruntime as ort

    from gateway.modelstore import ModelStore
    from gateway.variants import Variant
    from tests.numeric import session_options

    store = ModelStore(demo_store.root)
    rows = np.ascontiguousarray(demo_store.X[:64], dtype=np.float32)
    options = session_options()  # the gateway's, with the thread count of the environment
    for meta in demo_store.metas.values():
        variant = Variant(meta, store.load_bytes(meta.sha256), options)
        assert variant._run is not variant.session.run  # the fast path is in effect
        reference = ort.InferenceSession(  # same options: optimisations change the last bits
            store.load_bytes(meta.sha256), sess_options=options.build()
        )
        for batch in (rows[:1], rows):
            labels, scores = variant.run(batch)
            want_labels, want_scores = reference.run(
                [meta.label_output, meta.scores_output], {meta.input_name: batch}
            )
            assert np.array_equal(labels, want_labels) and np.array_equal(scores, want_scores)
