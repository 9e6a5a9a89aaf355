"""The Open Inference Protocol V2's conversion, as ``gateway.codec`` is the native API's:
ModelInferRequest in (validated, each error naming its OIP field), ModelInferResponse and model
metadata out. Pure functions, no gRPC; the semantics are in ``gateway.oip``'s docstring.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from abgate.errors import InvalidArgument, shown
from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.oip.v2 import model_config_pb2 as mc
from gateway import codec
from gateway.dataplane import ArmRuntime, BatchResult, ExperimentRuntime

PLATFORM = "onnxruntime_onnx"
FEATURES = "features"
USER_ID = "user_id"  # request parameter, and the name of the optional per-row BYTES input
USER_ID_HEADER = "x-user-id"
LABEL = "label"
PROBABILITIES = "probabilities"
ARM, BUCKET, REQUEST_ID = "arm", "bucket", "request_id"
DEFAULT_OUTPUTS = (LABEL, PROBABILITIES)
KNOWN_OUTPUTS = (LABEL, PROBABILITIES, ARM, BUCKET, REQUEST_ID)
MIXED_ARMS = "*"

_FP32 = np.dtype("<f4")
_INT64 = np.dtype("<i8")
_U32 = struct.Struct("<I")


@dataclass(slots=True)
class InferCall:
    """A validated ModelInfer request."""

    matrix: np.ndarray  # (n, n_features) float32
    user_id: str  # the one user of every row ("" when user_ids is given)
    user_ids: list[str] | None  # per-row users
    request_id: str  # "" -> generate
    outputs: tuple[str, ...]
    raw: bool  # answer with raw_output_contents


def check_version(version: str) -> None:
    """A request cannot choose an arm's version: the gateway routes (field ``model_version``)."""
    if version:
        raise InvalidArgument(
            f"{shown(version)} cannot be chosen: the gateway routes each user to an arm; "
            "leave it empty",
            field="model_version",
        )


def decode_bytes_tensor(raw: bytes, n: int, field: str) -> list[bytes]:
    """Elements of a raw BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    out = []
    pos, end = 0, len(raw)
    for _ in range(n):
        if pos + 4 > end:
            raise InvalidArgument(f"holds fewer than {n} length-prefixed elements", field=field)
        (size,) = _U32.unpack_from(raw, pos)
        pos += 4
        if pos + size > end:
            raise InvalidArgument(f"holds fewer than {n} length-prefixed elements", field=field)
        out.append(raw[pos : pos + size])
        pos += size
    if pos != end:
        raise InvalidArgument(f"holds more than {n} elements", field=field)
    return out


def encode_bytes_tensor(items: Sequence[bytes]) -> bytes:
    return b"".join(_U32.pack(len(b)) + b for b in items)


def _rows_of(shape: Sequence[int], n_features: int, max_rows: int) -> int:
    # Indexing, not list(shape): a protobuf repeated field copies slowly.
    dims = len(shape)
    if dims == 1 and shape[0] == n_features:
        return 1
    if dims != 2 or shape[1] != n_features or shape[0] < 0:
        raise InvalidArgument(
            f"shape {shown(list(shape))} does not match [{n_features}] or [n, {n_features}]",
            field="features.shape",
        )
    n = shape[0]
    if n == 0:
        raise InvalidArgument("must hold at least one row", field="features.shape")
    if n > max_rows:
        raise InvalidArgument(f"{n} rows exceed the limit of {max_rows}", field="features.shape")
    return n


def _user_ids_of(
    tensor: oip.ModelInferRequest.InferInputTensor, data: bytes | None, n: int
) -> list[str]:
    if tensor.datatype != "BYTES":
        raise InvalidArgument(
            f"datatype {shown(tensor.datatype)} not supported, use BYTES", USER_ID
        )
    if list(tensor.shape) != [n]:
        raise InvalidArgument(
            f"shape {shown(list(tensor.shape))} does not match [{n}] (one user id per row)",
            field="user_id.shape",
        )
    items = (
        decode_bytes_tensor(data, n, USER_ID)
        if data is not None
        else tensor.contents.bytes_contents
    )
    if len(items) != n:
        raise InvalidArgument(f"has {len(items)} elements for {n} rows", field=USER_ID)
    users = []
    for i, item in enumerate(items):
        field = f"user_id[{i}]"
        try:
            user = item.decode()
        except UnicodeDecodeError:
            raise InvalidArgument("is not valid UTF-8", field=field) from None
        codec.check_user_id(user, field=field)
        users.append(user)
    return users


def _single_user(request: oip.ModelInferRequest, metadata: Callable[[], Any] | None) -> str:
    params = request.parameters
    if USER_ID in params:
        param = params[USER_ID]
        if param.WhichOneof("parameter_choice") != "string_param":
            raise InvalidArgument("must be a string parameter", field=USER_ID)
        user = param.string_param
    else:
        user = ""
        for key, value in (metadata() if metadata is not None else None) or ():
            if key == USER_ID_HEADER:
                user = value
                break
        if not user:
            raise InvalidArgument(
                "missing: give the request parameter 'user_id' (string) or the "
                f"'{USER_ID_HEADER}' header",
                field=USER_ID,
            )
    codec.check_user_id(user)
    return user


def _request_id_of(request_id: str, n: int) -> str:
    if request_id:
        codec.check_request_id(request_id, field="id")
        if n > 1:
            longest = f"{request_id}:{n - 1}"
            if len(longest.encode()) > codec.MAX_REQUEST_ID_BYTES:
                raise InvalidArgument(
                    f"rows are logged as '<id>:<row>' and {longest[-20:]!r} would be longer "
                    f"than {codec.MAX_REQUEST_ID_BYTES} bytes",
                    field="id",
                )
    return request_id


_ONE_OUTPUT = {name: (name,) for name in KNOWN_OUTPUTS}  # the common case, one lookup


def _outputs_of(request: oip.ModelInferRequest) -> tuple[str, ...]:
    outputs = request.outputs
    if not outputs:
        return DEFAULT_OUTPUTS
    if len(outputs) == 1:
        one = _ONE_OUTPUT.get(outputs[0].name)
        if one is not None:
            return one
    names = tuple([o.name for o in outputs])
    for i, name in enumerate(names):
        if name not in KNOWN_OUTPUTS:
            raise InvalidArgument(
                f"unknown output {shown(name)}; this model has {', '.join(KNOWN_OUTPUTS)}",
                field=f"outputs[{i}].name",
            )
    return names


def decode_infer(
    request: oip.ModelInferRequest,
    exp: ExperimentRuntime,
    max_rows: int,
    metadata: Callable[[], Any] | None = None,
) -> InferCall:
    """Validate a ModelInfer request against ``exp``; ``metadata`` returns the call's gRPC
    metadata (read only when the user id is not a request parameter)."""
    check_version(request.model_version)
    inputs = request.inputs
    features_at = users_at = -1
    for i, tensor in enumerate(inputs):
        if tensor.name == USER_ID and users_at < 0:
            users_at = i
        elif features_at < 0:
            features_at = i
        else:
            raise InvalidArgument(
                f"expected one FP32 features tensor (and optionally a BYTES '{USER_ID}'), "
                f"got {len(inputs)} inputs",
                field="inputs",
            )
    if features_at < 0:
        raise InvalidArgument("no features tensor", field="inputs")
    raw_contents = request.raw_input_contents
    raw = len(raw_contents) > 0
    if raw:
        if len(raw_contents) != len(inputs):
            raise InvalidArgument(
                f"has {len(raw_contents)} entries for {len(inputs)} inputs", "raw_input_contents"
            )
        for i, tensor in enumerate(inputs):
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"inputs[{i}] sets contents as well; send every input one way",
                    field="raw_input_contents",
                )
    features = inputs[features_at]
    if features.datatype != "FP32":
        # Same words as the native API; an empty datatype is not FP32 here (OIP requires one).
        raise InvalidArgument(
            f"datatype {shown(features.datatype)} not supported, use FP32", field=FEATURES
        )
    n_features = exp.n_features
    n = _rows_of(features.shape, n_features, max_rows)
    if raw:
        matrix = codec.matrix_of_bytes(raw_contents[features_at], n, n_features)
    else:
        contents = features.contents
        values = contents.fp32_contents
        k = len(values)
        if len(contents.ListFields()) > (1 if k else 0):  # another *_contents is set
            raise InvalidArgument("FP32 values go in fp32_contents", field="features.contents")
        if k != n * n_features:
            raise InvalidArgument(
                f"expected {n} rows x {n_features} float32 values, got {k}", field=FEATURES
            )
        matrix = np.fromiter(values, _FP32, k).reshape(n, n_features)
        codec.check_finite(matrix)
    if users_at >= 0:
        if USER_ID in request.parameters:
            raise InvalidArgument(
                "given both as a request parameter and as an input; give one", field=USER_ID
            )
        user_id = ""
        user_ids: list[str] | None = _user_ids_of(
            inputs[users_at], raw_contents[users_at] if raw else None, n
        )
    else:
        user_id = _single_user(request, metadata)
        user_ids = None
    return InferCall(
        matrix=matrix,
        user_id=user_id,
        user_ids=user_ids,
        request_id=_request_id_of(request.id, n),
        outputs=_outputs_of(request),
        raw=raw,
    )


def row_request_ids(request_id: str, n: int) -> list[str]:
    return [request_id] if n == 1 else [f"{request_id}:{i}" for i in range(n)]


def _output(
    name: str, result: BatchResult
) -> tuple[str, tuple[int, ...], np.ndarray | list[bytes]]:
    """(datatype, shape, values) of one output: a little-endian array, or BYTES elements."""
    n = len(result.request_ids)
    if name == LABEL:
        return "INT64", (n,), np.ascontiguousarray(result.labels, dtype=_INT64)
    if name == PROBABILITIES:
        return "FP32", result.scores.shape, np.ascontiguousarray(result.scores, dtype=_FP32)
    if name == BUCKET:
        return "INT64", (n,), np.ascontiguousarray(result.buckets, dtype=_INT64)
    if name == ARM:
        names = [a.name.encode() for a in result.arms]
        return "BYTES", (n,), [names[i] for i in result.arm_index.tolist()]
    return "BYTES", (n,), [rid.encode() for rid in result.request_ids]


def _model_version(exp: ExperimentRuntime, arm: ArmRuntime | None) -> str:
    return f"{arm.name if arm is not None else MIXED_ARMS}@{exp.config_version}"


def _answer_head(exp: ExperimentRuntime, arm: ArmRuntime | None) -> oip.ModelInferResponse:
    """The part of an answer fixed by experiment, config version and arm (None: mixed arms)."""
    resp = oip.ModelInferResponse(model_name=exp.name, model_version=_model_version(exp, arm))
    params = resp.parameters
    params["config_version"].int64_param = exp.config_version
    params["hash_version"].int64_param = exp.hash_version
    if arm is not None:
        params["arm"].string_param = arm.name
        params["model_id"].string_param = arm.model_id
        params["model_sha256"].string_param = arm.model_sha256
    return resp


def encode_infer(
    exp: ExperimentRuntime,
    result: BatchResult,
    request_id: str,
    outputs: Sequence[str],
    raw: bool,
    arm: ArmRuntime | None,
    bucket: int | None,
) -> oip.ModelInferResponse:
    """The answer, built by protobuf. ``arm``: the one arm that answered every row (None: rows
    on several arms); ``bucket``: the one bucket (single-user calls). The servicer answers with
    the faster ``encode_answer``; this is its definition, which tests compare it with."""
    resp = _answer_head(exp, arm)
    resp.id = request_id
    params = resp.parameters
    params["request_id"].string_param = request_id
    if bucket is not None:
        params["bucket"].int64_param = bucket
    for name in outputs:
        datatype, shape, values = _output(name, result)
        out = resp.outputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            resp.raw_output_contents.append(
                values.tobytes() if isinstance(values, np.ndarray) else encode_bytes_tensor(values)
            )
        elif isinstance(values, list):
            out.contents.bytes_contents.extend(values)
        elif datatype == "FP32":
            out.contents.fp32_contents.extend(values.ravel().tolist())
        else:
            out.contents.int64_contents.extend(values.tolist())
    return resp


# -- hand-encoded answers ------------------------------------------------------------------------
# As for native Predict answers (gateway.codec): building a ModelInferResponse per call costs
# ~14 µs, encoding it by hand ~3 µs. The fields that are constant per experiment and arm are
# serialized once by protobuf (``response_prefix``); per call we append id, the request_id and
# bucket parameters and the outputs in wire format, their values either in raw_output_contents
# or as typed contents. Parsers accept fields in any order and merge map entries; tests compare
# with ``encode_infer``.
def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + codec.varint(len(payload)) + payload


_PARAM_REQUEST_ID = b"\x0a\x0arequest_id"  # map entry key (field 1)
_PARAM_BUCKET = b"\x0a\x06bucket"
_INT64_MASK = 0xFFFFFFFFFFFFFFFF
# InferTensorContents fields, by output datatype: packed fp32_contents (6), packed
# int64_contents (3); bytes_contents (8) is repeated, one field per element.
_FP32_CONTENTS, _INT64_CONTENTS, _BYTES_CONTENTS = b"\x32", b"\x1a", b"\x42"


@functools.lru_cache(maxsize=1024)
def _output_fields(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """An outputs entry's name, datatype and packed shape. Cached: the same few shapes come back
    call after call."""
    return (
        _len_field(b"\x0a", name.encode())
        + _len_field(b"\x12", datatype.encode())
        + _len_field(b"\x1a", b"".join(codec.varint(d) for d in shape))
    )


@functools.lru_cache(maxsize=1024)
def _output_header(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """An outputs entry (5) without contents."""
    return _len_field(b"\x2a", _output_fields(name, datatype, shape))


def _int64_varints(values: np.ndarray) -> bytes:
    if len(values) and values.min() >= 0 and values.max() < 128:
        return values.astype(np.uint8).tobytes()  # one byte each: labels and small classes
    return b"".join(codec.varint(v & _INT64_MASK) for v in values.tolist())


def _typed_contents(datatype: str, values: np.ndarray | list[bytes]) -> bytes:
    """An InferTensorContents holding ``values``."""
    if isinstance(values, list):
        return b"".join(_len_field(_BYTES_CONTENTS, v) for v in values)
    if datatype == "FP32":
        return _len_field(_FP32_CONTENTS, values.tobytes())
    return _len_field(_INT64_CONTENTS, _int64_varints(values))


def response_prefix(exp: ExperimentRuntime, arm: ArmRuntime | None) -> bytes:
    """The fields of every answer of this experiment and arm, serialized by protobuf."""
    return _answer_head(exp, arm).SerializeToString()


def encode_answer(
    prefix: bytes,
    result: BatchResult,
    request_id: str,
    outputs: Sequence[str],
    bucket: int | None,
    raw: bool,
) -> bytes:
    """A serialized ModelInferResponse equal to ``encode_infer``'s: ``prefix`` plus id (3),
    parameters (4), outputs (5) and, when ``raw``, raw_output_contents (6); otherwise each
    output carries its values as typed contents (5)."""
    varint = codec.varint
    rid = request_id.encode()
    size = varint(len(rid))
    # id (3); the parameters (4) entry request_id: its key, then InferParameter.string_param (3)
    entry = _PARAM_REQUEST_ID + b"\x12" + varint(len(rid) + len(size) + 1) + b"\x1a" + size
    parts = [prefix, b"\x1a", size, rid, b"\x22", varint(len(entry) + len(rid)), entry, rid]
    if bucket is not None:
        parts.append(_bucket_parameter(bucket))
    contents: list[bytes] = []
    for name in outputs:
        datatype, shape, values = _output(name, result)
        if raw:
            parts.append(_output_header(name, datatype, shape))
            data = (
                values.tobytes() if isinstance(values, np.ndarray) else encode_bytes_tensor(values)
            )
            contents += (b"\x32", varint(len(data)), data)
        else:
            typed = _typed_contents(datatype, values)
            body = _output_fields(name, datatype, shape) + b"\x2a" + varint(len(typed)) + typed
            parts += (b"\x2a", varint(len(body)), body)
    parts += contents
    return b"".join(parts)


@functools.lru_cache(maxsize=16_384)  # buckets are 0..9,999
def _bucket_parameter(bucket: int) -> bytes:
    """The parameters (4) entry bucket: its key, then InferParameter.int64_param (2)."""
    return _len_field(b"\x22", _PARAM_BUCKET + _len_field(b"\x12", b"\x10" + codec.varint(bucket)))


def serialize_infer(response: bytes | oip.ModelInferResponse) -> bytes:
    """Response serializer: hand-encoded answers pass through, messages are serialized."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def model_metadata(exp: ExperimentRuntime) -> oip.ModelMetadataResponse:
    tm = oip.ModelMetadataResponse.TensorMetadata
    return oip.ModelMetadataResponse(
        name=exp.name,
        versions=[],
        platform=PLATFORM,
        inputs=[tm(name=FEATURES, datatype="FP32", shape=[-1, exp.n_features])],
        outputs=[
            tm(name=LABEL, datatype="INT64", shape=[-1]),
            tm(name=PROBABILITIES, datatype="FP32", shape=[-1, exp.n_classes]),
        ],
    )


def model_config(exp: ExperimentRuntime, max_batch_rows: int) -> mc.ModelConfig:
    """Triton's ModelConfig of an experiment: the tensors of ``model_metadata`` (dims without
    the batch dimension, ``max_batch_size`` = ``--max-batch-rows``), one CPU instance group per
    arm, and the routing in ``parameters``: ``config_version``, ``hash_version``, ``buckets``
    (10,000), ``arms`` (their names in order), ``shadows`` and, per arm, ``arm.NAME`` =
    ``MODEL_ID:VERSION sha256=HEX buckets=K`` (K of the buckets route to it)."""
    shares = np.bincount(exp.table_np, minlength=len(exp.arms)).tolist()
    param = mc.ModelParameter
    parameters = {
        "config_version": param(string_value=str(exp.config_version)),
        "hash_version": param(string_value=str(exp.hash_version)),
        "buckets": param(string_value=str(len(exp.table))),
        "arms": param(string_value=",".join(a.name for a in exp.arms)),
        "shadows": param(string_value=",".join(sh.name for sh in exp.shadows)),
    }
    for arm, k in zip(exp.arms, shares, strict=True):
        parameters[f"arm.{arm.name}"] = param(
            string_value=f"{arm.model_id}:{arm.model_version} sha256={arm.model_sha256} buckets={k}"
        )
    cpu = mc.ModelInstanceGroup.KIND_CPU
    return mc.ModelConfig(
        name=exp.name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=max_batch_rows,
        input=[mc.ModelInput(name=FEATURES, data_type=mc.TYPE_FP32, dims=[exp.n_features])],
        output=[
            mc.ModelOutput(name=LABEL, data_type=mc.TYPE_INT64, dims=[]),
            mc.ModelOutput(name=PROBABILITIES, data_type=mc.TYPE_FP32, dims=[exp.n_classes]),
        ],
        instance_group=[mc.ModelInstanceGroup(name=a.name, count=1, kind=cpu) for a in exp.arms],
        parameters=parameters,
    )


def stream_answer(answer: bytes | oip.ModelInferResponse) -> bytes:
    """A ModelStreamInferResponse holding one ModelInfer answer (field 2), encoded or not."""
    return _len_field(b"\x12", serialize_infer(answer))


def stream_error(message: str, request_id: str, model_name: str) -> bytes:
    """A ModelStreamInferResponse carrying an error; its ``infer_response`` names the request
    (``id``, ``model_name``) so a client matches the error with the call that failed."""
    return oip.ModelStreamInferResponse(
        error_message=message,
        infer_response=oip.ModelInferResponse(id=request_id, model_name=model_name),
    ).SerializeToString()
