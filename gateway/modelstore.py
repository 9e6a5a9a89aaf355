"""Content-addressed model store: ``objects/<sha256>.onnx`` plus ``meta/<sha256>.json``.

The serving path imports this module, so it needs only the standard library and protobuf. A
model is found by a validated 64-hex sha256 (never a path from outside) and its bytes are
re-hashed when read. A model must be self-contained (``check_self_contained``): weights in an
ONNX external-data file would be read from wherever the loading process runs, so the same
sha256 could score differently. ``ModelStore.put`` refuses such a model (and bytes that are no
ONNX model), whoever calls it; the gateway refuses to load one that a store written by hand
holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class ModelStoreError(Exception):
    """Base of store errors."""


class ModelNotFound(ModelStoreError):
    """No model with that sha256, id or id:version."""


class ModelIntegrityError(ModelStoreError):
    """The bytes on disk do not hash to their name, or the object is not a regular file."""


class InvalidModelRef(ModelStoreError):
    """A reference that is neither a 64-hex sha256, nor ``id`` nor ``id:version``."""


class ExternalData(ModelStoreError):
    """An ONNX model that keeps tensor data outside its own bytes."""


class NotOnnx(ModelStoreError):
    """Bytes that are no ONNX model (they do not parse, or hold no graph)."""


# -- self-contained ONNX models -----------------------------------------------------------------
# The skeleton of onnx.proto: only the messages and fields through which a tensor can be
# reached from a ModelProto (initializers, TENSOR/TENSORS/SPARSE_TENSOR attributes, subgraphs
# of GRAPH/GRAPHS attributes, functions, training graphs), with onnx's field numbers.
# Everything else parses as unknown fields, in C; tests/gateway/test_external_data.py checks
# this list against onnx's own descriptors. Every field is declared repeated (a singular one
# that occurs twice is then seen twice, not merged), strings bytes and enums int32: whatever
# onnxruntime's parser would keep, this one keeps too, and possibly more (it only refuses).
_SKELETON: dict[str, list[tuple[str, int, str]]] = {  # message: [(field, number, type)]
    "Model": [("graph", 7, "Graph"), ("training_info", 20, "TrainingInfo"),
              ("functions", 25, "Function")],
    "TrainingInfo": [("initialization", 1, "Graph"), ("algorithm", 2, "Graph")],
    "Graph": [("node", 1, "Node"), ("initializer", 5, "Tensor"),
              ("sparse_initializer", 15, "SparseTensor")],
    "Node": [("attribute", 5, "Attribute")],
    "Function": [("node", 7, "Node"), ("attribute_proto", 11, "Attribute")],
    "Attribute": [("t", 5, "Tensor"), ("g", 6, "Graph"), ("tensors", 10, "Tensor"),
                  ("graphs", 11, "Graph"), ("sparse_tensor", 22, "SparseTensor"),
                  ("sparse_tensors", 23, "SparseTensor")],
    "SparseTensor": [("values", 1, "Tensor"), ("indices", 2, "Tensor")],
    "Tensor": [("name", 8, "bytes"), ("external_data", 13, "bytes"),
               ("data_location", 14, "int32")],
}  # fmt: skip
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_SKELETON_PACKAGE = "abgate.onnx_skeleton"
_skeleton_model: type[Message] | None = None


def _skeleton() -> type[Message]:
    global _skeleton_model
    if _skeleton_model is None:
        fd = descriptor_pb2.FileDescriptorProto(
            name="abgate/onnx_skeleton.proto", package=_SKELETON_PACKAGE, syntax="proto2"
        )
        F = descriptor_pb2.FieldDescriptorProto
        scalars = {"bytes": F.TYPE_BYTES, "int32": F.TYPE_INT32}
        for message, fields in _SKELETON.items():
            m = fd.message_type.add(name=message)
            for name, number, typ in fields:
                f = m.field.add(name=name, number=number, label=F.LABEL_REPEATED)
                if typ in scalars:
                    f.type = scalars[typ]
                else:
                    f.type, f.type_name = F.TYPE_MESSAGE, f".{_SKELETON_PACKAGE}.{typ}"
        pool = descriptor_pool.DescriptorPool()  # its own: onnx may be loaded beside it
        pool.Add(fd)
        found = pool.FindMessageTypeByName(f"{_SKELETON_PACKAGE}.Model")
        _skeleton_model = message_factory.GetMessageClass(found)
    return _skeleton_model


def external_tensors(onnx_bytes: bytes) -> list[str]:
    """Names of the tensors of an ONNX model whose data lives outside its bytes
    (``data_location: EXTERNAL``, or ``external_data`` entries), in initializers, sparse
    initializers, tensor attributes, subgraphs, functions and training graphs at any depth.
    Raises ValueError when the bytes are no protobuf message."""
    try:
        model = _skeleton().FromString(onnx_bytes)
    except DecodeError:
        raise ValueError("not a valid ONNX model (it does not parse)") from None
    found: list[str] = []
    stack: list[Any] = [model]
    while stack:  # iterative: a model may nest subgraphs deeper than Python recursion
        m = stack.pop()
        kind = m.DESCRIPTOR.name
        if kind == "Tensor":
            if _EXTERNAL in m.data_location or len(m.external_data):
                name = m.name[-1] if len(m.name) else b""  # the last one, as a parser keeps
                found.append(name.decode("utf-8", "replace") or "(unnamed)")
            continue
        for f, value in m.ListFields():
            if f.message_type is not None:  # every field is repeated (see _SKELETON)
                stack.extend(value)
    return found


def check_storable(onnx_bytes: bytes) -> None:
    """What the store holds: an ONNX model with a graph (NotOnnx) and every tensor inside its
    bytes (ExternalData). Whether onnxruntime can run it is checked by register and convert."""
    try:
        model = _skeleton().FromString(onnx_bytes)
    except DecodeError:
        raise NotOnnx("not an ONNX model (it does not parse)") from None
    if not len(model.graph):  # type: ignore[attr-defined]
        raise NotOnnx("not an ONNX model (it holds no graph)")
    check_self_contained(onnx_bytes)


def check_self_contained(onnx_bytes: bytes) -> None:
    """ExternalData unless every tensor of the model is inside its bytes (ValueError: the
    bytes are no ONNX model)."""
    names = external_tensors(onnx_bytes)
    if names:
        listed = ", ".join(repr(n[:64]) for n in names[:3]) + (", …" if len(names) > 3 else "")
        raise ExternalData(
            f"{len(names)} tensor(s) keep their data in an external file ({listed}); only "
            "self-contained ONNX models are served (save without external data)"
        )


@dataclass(frozen=True)
class ModelMetadata:
    sha256: str
    id: str
    version: str
    input_name: str
    n_features: int
    feature_names: tuple[str, ...]
    label_output: str
    scores_output: str
    classes: tuple[int, ...]
    opset: int
    source: str
    parity_max_abs_diff: float
    parity_rows: int
    created_at: str = ""
    # How the model was made (converters.recipe): JSON, describing only; {} when unknown.
    recipe: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        d["classes"] = list(self.classes)
        d["recipe"] = dict(self.recipe)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["feature_names"] = tuple(values.get("feature_names", ()))
        values["classes"] = tuple(int(c) for c in values.get("classes", ()))
        if not isinstance(values.get("recipe", {}), dict):
            values["recipe"] = {}
        return cls(**values)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise InvalidModelRef(f"{sha!r} is not a lowercase 64-hex sha256")
    return sha


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _object(self, sha: str) -> Path:
        return self.root / "objects" / f"{check_sha(sha)}.onnx"

    def _meta(self, sha: str) -> Path:
        return self.root / "meta" / f"{check_sha(sha)}.json"

    def contains(self, sha: str) -> bool:
        return self._meta(sha).is_file() and self._object(sha).is_file()

    def put(self, onnx_bytes: bytes, metadata: ModelMetadata) -> ModelMetadata:
        """Store bytes and metadata (its sha256 is computed here, its version assigned when
        empty). Putting the same bytes again returns the stored metadata unchanged. Bytes that
        are no ONNX model (NotOnnx) or keep data outside themselves (ExternalData) are refused."""
        check_storable(onnx_bytes)  # whoever calls: a model is its sha256 alone
        sha = sha256_hex(onnx_bytes)
        if self.contains(sha):
            return self.get(sha)
        if not _MODEL_ID.match(metadata.id):
            raise InvalidModelRef(
                f"model id {metadata.id!r} must be 1-128 of letters, digits, '_', '.', '-'"
            )
        version = metadata.version or str(self._next_version(metadata.id))
        if ":" in version or "/" in version:
            raise InvalidModelRef(f"model version {version!r} must not contain ':' or '/'")
        created = metadata.created_at or datetime.now(UTC).isoformat(timespec="seconds")
        meta = replace(metadata, sha256=sha, version=version, created_at=created)
        _atomic_write(self._object(sha), onnx_bytes)
        # Metadata last: a model is visible only once its bytes are durable.
        _atomic_write(self._meta(sha), json.dumps(meta.to_dict(), indent=1).encode())
        return meta

    def _next_version(self, model_id: str) -> int:
        versions = [int(m.version) for m in self.list() if m.id == model_id and m.version.isdigit()]
        return max(versions, default=0) + 1

    def get(self, sha: str) -> ModelMetadata:
        path = self._meta(sha)
        try:
            return ModelMetadata.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelNotFound(f"no model {sha[:12]}… in the store at {self.root}") from None

    def load_bytes(self, sha: str) -> bytes:
        """The model's bytes, after checking they hash to ``sha``."""
        path = self._object(sha)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ModelIntegrityError(f"model object {sha[:12]}… is not a regular file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFound(f"no model {sha[:12]}… in the store at {self.root}") from None
        if sha256_hex(data) != sha:
            raise ModelIntegrityError(f"model object {sha[:12]}… does not match its sha256")
        return data

    def list(self) -> list[ModelMetadata]:
        meta_dir = self.root / "meta"
        if not meta_dir.is_dir():
            return []
        metas = []
        for path in meta_dir.glob("*.json"):
            if _SHA256.match(path.stem):
                metas.append(ModelMetadata.from_dict(json.loads(path.read_text())))
        return sorted(
            metas, key=lambda m: (m.id, int(m.version) if m.version.isdigit() else 0, m.version)
        )

    def resolve(self, ref: str) -> ModelMetadata:
        """A full sha256, ``id`` (its latest version) or ``id:version``."""
        if _SHA256.match(ref):
            return self.get(ref)
        model_id, _, version = ref.partition(":")
        if not _MODEL_ID.match(model_id):
            raise InvalidModelRef(f"{ref!r} is not a sha256, 'id' or 'id:version'")
        candidates = [m for m in self.list() if m.id == model_id]
        if version:
            candidates = [m for m in candidates if m.version == version]
        if not candidates:
            raise ModelNotFound(f"no model {ref!r} in the store at {self.root}")
        return candidates[-1]
