"""The Open Inference Protocol V2 over HTTP/REST (issue #17): off by default, ``abgate serve
--http-listen HOST:PORT``. The KServe V2 REST paths, each the gRPC call of the same name on the
same ``OipServicer`` (one code path: routing, validation, logging, idempotency, statuses):

    GET  /v2/health/live · /v2/health/ready     ServerLive · ServerReady
    GET  /v2                                    ServerMetadata
    GET  /v2/models/{name}[/versions/{v}]       ModelMetadata
    GET  /v2/models/{name}[/versions/{v}]/ready ModelReady
    POST /v2/models/{name}[/versions/{v}]/infer ModelInfer (JSON tensors)

The HTTP server runs on its own thread and event loop: it reads, parses and encodes JSON there,
and hands each call to the gateway's loop as one coroutine (``run_coroutine_threadsafe``), so
the gRPC loop never waits on a slow HTTP client. Triton's binary-tensor extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``) in both directions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip
from abgate.surface import OVERLOADED_MESSAGE, Surface
from gateway.auth import CLIENT_IDENTITY, ClientTokens

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}  # fmt: skip
# REST datatype -> (the InferTensorContents field, numpy dtype)
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32), "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64), "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32), "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64), "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}  # fmt: skip
# Little-endian element types of binary tensor data (Triton's binary-tensor extension) and of
# raw_output_contents; BYTES elements are 4-byte little-endian lengths, each then its bytes.
_WIRE = {
    "BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
    "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
HEADER_LENGTH = "inference-header-content-length"
_INT64_TYPES = (
    _descriptor.FieldDescriptor.CPPTYPE_INT64,
    _descriptor.FieldDescriptor.CPPTYPE_UINT64,
)
BINARY_SIZE = "binary_data_size"


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the OIP servicer uses."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""
        self._headers = tuple(headers)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._headers

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise _Aborted()


class _Aborted(Exception):
    pass


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)  # KServe V2's error shape


def _param(value: Any) -> oip.InferParameter:
    if isinstance(value, bool):
        return oip.InferParameter(bool_param=value)
    if isinstance(value, int):
        return oip.InferParameter(int64_param=value)
    if isinstance(value, float):
        return oip.InferParameter(double_param=value)
    if isinstance(value, str):
        return oip.InferParameter(string_param=value)
    raise BadRequest(f"a parameter must be a bool, number or string, not {type(value).__name__}")


def _param_value(p: oip.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _params(doc: Any, where: str) -> dict[str, oip.InferParameter]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    return {str(k): _param(v) for k, v in doc.items()}


def _binary_size(params: dict[str, oip.InferParameter], where: str) -> int | None:
    """The input's ``binary_data_size`` (taken out of its parameters), None without one."""
    p = params.pop(BINARY_SIZE, None)
    if p is None:
        return None
    size = _param_value(p)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"{where}.parameters.{BINARY_SIZE}: must be an integer >= 0")
    return size


def _bytes_elements(data: bytes, where: str) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        if at + 4 > len(data):
            raise BadRequest(f"{where}: a BYTES element's 4-byte length is cut short")
        n = int.from_bytes(data[at : at + 4], "little")
        if at + 4 + n > len(data):
            raise BadRequest(f"{where}: a BYTES element of {n} bytes runs past the tensor's data")
        out.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _typed_from_binary(tensor: Any, data: bytes, where: str) -> None:
    """Binary tensor data as typed contents (when not every input is binary)."""
    dtype = tensor.datatype
    if dtype == "BYTES":
        tensor.contents.bytes_contents.extend(_bytes_elements(data, where))
        return
    if dtype not in _WIRE:
        raise BadRequest(f"{where}.datatype: {dtype!r} is not a V2 datatype")
    wire = np.dtype(_WIRE[dtype])
    if len(data) % wire.itemsize:
        raise BadRequest(f"{where}: {len(data)} bytes are not a whole number of {dtype} elements")
    field, np_type = _CONTENTS[dtype]
    values: np.ndarray = np.frombuffer(data, dtype=wire).astype(np_type)
    getattr(tensor.contents, field).extend(values.tolist())


def infer_request(
    doc: Any, name: str, version: str, binary: bytes = b""
) -> tuple[oip.ModelInferRequest, frozenset[str] | bool]:
    """A KServe V2 REST inference request as the gRPC ModelInferRequest, and which outputs are
    asked for as binary data (True: every one, ``binary_data_output``). ``binary``: the bytes
    after the JSON header (Triton's binary-tensor extension), taken by the inputs that give a
    ``binary_data_size``, in order. When every input is binary they become
    ``raw_input_contents`` (gRPC's raw path, its byte checks), otherwise typed contents."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs: must be a non-empty list of tensors")
    req = oip.ModelInferRequest(model_name=name, model_version=version, id=str(doc.get("id", "")))
    request_params = _params(doc.get("parameters"), "parameters")
    binary_out = request_params.pop("binary_data_output", None)
    if binary_out is not None and binary_out.WhichOneof("parameter_choice") != "bool_param":
        raise BadRequest("parameters.binary_data_output: must be true or false")
    for k, v in request_params.items():
        req.parameters[k].CopyFrom(v)
    raws: list[bytes | None] = []
    at = 0
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise BadRequest(f"{where}: must be an object")
        dtype, shape, data = t.get("datatype"), t.get("shape"), t.get("data")
        if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
            raise BadRequest(f"{where}.shape: must be a list of integers")
        tensor = req.inputs.add(name=str(t.get("name", "")), datatype=str(dtype), shape=shape)
        tensor_params = _params(t.get("parameters"), where)
        size = _binary_size(tensor_params, where)
        for k, v in tensor_params.items():
            tensor.parameters[k].CopyFrom(v)
        if size is not None:
            if data is not None:
                raise BadRequest(f"{where}: give data or {BINARY_SIZE}, not both")
            if at + size > len(binary):
                raise BadRequest(
                    f"{where}.parameters.{BINARY_SIZE}: {size} bytes from offset {at}, but the "
                    f"binary data after the JSON header is {len(binary)} bytes"
                )
            raws.append(binary[at : at + size])
            at += size
            continue
        raws.append(None)
        if dtype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1).tolist() if data is not None else []
            if not all(isinstance(x, str) for x in flat):
                raise BadRequest(f"{where}.data: BYTES elements must be strings")
            tensor.contents.bytes_contents.extend(x.encode() for x in flat)
        elif dtype in _CONTENTS:
            field, np_type = _CONTENTS[dtype]
            try:
                numbers = np.asarray(data, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise BadRequest(f"{where}.data: must be (nested) lists of numbers") from None
            getattr(tensor.contents, field).extend(numbers.astype(np_type).tolist())
        else:
            raise BadRequest(f"{where}.datatype: {dtype!r} is not a V2 datatype")
    if at != len(binary):
        raise BadRequest(
            f"{len(binary) - at} bytes of binary data after the JSON header belong to no input "
            f"(their {BINARY_SIZE} add up to {at})"
        )
    if binary and all(r is not None for r in raws):
        req.raw_input_contents.extend(r for r in raws if r is not None)
    else:
        for i, (tensor, r) in enumerate(zip(req.inputs, raws, strict=True)):
            if r is not None:
                _typed_from_binary(tensor, r, f"inputs[{i}]")
    binary_names: set[str] = set()
    not_binary: set[str] = set()
    for i, o in enumerate(doc.get("outputs") or []):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest(f"outputs[{i}]: must be an object with a name")
        out = req.outputs.add(name=o["name"])
        out_params = _params(o.get("parameters"), f"outputs[{i}]")
        wanted = out_params.pop("binary_data", None)
        if wanted is not None:
            if wanted.WhichOneof("parameter_choice") != "bool_param":
                raise BadRequest(f"outputs[{i}].parameters.binary_data: must be true or false")
            (binary_names if wanted.bool_param else not_binary).add(o["name"])
        for k, v in out_params.items():
            out.parameters[k].CopyFrom(v)
    if binary_out is not None and binary_out.bool_param:
        # Every output is binary but those asked for with "binary_data": false.
        if not req.outputs:
            return req, True
        binary_names |= {o.name for o in req.outputs} - not_binary
    return req, frozenset(binary_names)


def _json_of(message: Any) -> Any:
    """A message as Triton's REST answers it: proto field names, every field (zeros too),
    enums by name and 64-bit integers as JSON numbers (protobuf's JSON mapping makes them
    strings)."""

    def numbers(value: Any, field: Any) -> Any:
        if isinstance(value, dict):
            return {k: numbers(v, _field(field, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v, field) for v in value]
        if isinstance(value, str) and field is not None and field.cpp_type in _INT64_TYPES:
            return int(value)
        return value

    def _field(parent: Any, name: str) -> Any:
        descriptor = getattr(parent, "message_type", None) if parent is not None else root
        if descriptor is None:
            return None
        if descriptor.GetOptions().map_entry:
            return descriptor.fields_by_name["value"]
        return descriptor.fields_by_name.get(name)

    root = message.DESCRIPTOR
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return {k: numbers(v, _field(None, k)) for k, v in doc.items()}


def _finite(values: list[Any]) -> list[Any]:
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def _output_bytes(r: oip.ModelInferResponse, k: int) -> bytes:
    """Output ``k``'s data in the binary-tensor extension's encoding."""
    if r.raw_output_contents:
        return r.raw_output_contents[k]  # already that encoding
    t = r.outputs[k]
    if t.datatype == "BYTES":
        return b"".join(len(b).to_bytes(4, "little") + b for b in t.contents.bytes_contents)
    values = getattr(t.contents, _CONTENTS[t.datatype][0])
    return np.asarray(values, dtype=_WIRE[t.datatype]).tobytes()


def infer_response(
    r: oip.ModelInferResponse, binary: frozenset[str] | bool = frozenset()
) -> tuple[dict[str, Any], list[bytes]]:
    """The gRPC ModelInferResponse as the KServe V2 REST answer, and the binary data that
    follows it (outputs named in ``binary``, or all when True, carry ``binary_data_size``
    instead of ``data``)."""
    outputs = []
    chunks: list[bytes] = []
    for k, t in enumerate(r.outputs):
        if binary is True or (binary and t.name in binary):
            data_bytes = _output_bytes(r, k)
            chunks.append(data_bytes)
            outputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                            "parameters": {BINARY_SIZE: len(data_bytes)}})  # fmt: skip
            continue
        if r.raw_output_contents:
            raw = r.raw_output_contents[k]
            if t.datatype == "BYTES":
                data, at = [], 0
                while at < len(raw):
                    n = int.from_bytes(raw[at : at + 4], "little")
                    data.append(raw[at + 4 : at + 4 + n].decode(errors="replace"))
                    at += 4 + n
            else:
                dtype = {"FP32": "<f4", "INT64": "<i8", "FP64": "<f8", "INT32": "<i4",
                         "UINT32": "<u4"}[t.datatype]  # fmt: skip
                data = np.frombuffer(raw, dtype=dtype).tolist()
        elif t.datatype == "BYTES":
            data = [b.decode(errors="replace") for b in t.contents.bytes_contents]
        else:
            data = list(getattr(t.contents, _CONTENTS[t.datatype][0]))
        outputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                        "data": _finite(data)})  # fmt: skip
    doc: dict[str, Any] = {"model_name": r.model_name, "model_version": r.model_version,
                           "outputs": outputs}  # fmt: skip
    if r.id:
        doc["id"] = r.id
    if r.parameters:
        doc["parameters"] = {k: _param_value(v) for k, v in r.parameters.items()}
    return doc, chunks


# Probes answer under overload, as gRPC health does: not counted by --max-concurrent-rpcs.
PROBES = frozenset({"ServerLive", "ServerReady"})
BUSY_MESSAGE = (
    "more REST calls waiting for the gateway's event loop than --max-pending-calls; retry later"
)


class OipHttp:
    """The REST app; calls run on ``loop`` (the gateway's) through ``call``.

    Admission is gRPC's: a call handed to the gateway's loop and not yet started there is
    pending, and past ``max_pending`` of them new ones answer 503 at once on the HTTP thread
    (gRPC core refuses past ``--max-pending-calls`` the same way); once started, every call but
    the probes takes a slot of the ``surface``'s ``--max-concurrent-rpcs``, shared with gRPC's
    calls, or answers 429 (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        servicer: Any,
        loop: asyncio.AbstractEventLoop,
        tokens: ClientTokens | None,
        surface: Surface | None = None,
        max_pending: int = 0,
    ) -> None:
        self.servicer, self.loop, self.tokens = servicer, loop, tokens
        self.surface, self.max_pending = surface, max_pending
        # Each written by one thread only (handed: the HTTP thread; started: the gateway's),
        # so no lock: pending = handed - started.
        self.handed = 0
        self.started = 0

    async def call(self, method: str, request: Any, http: Request) -> tuple[Any, _Context]:
        headers = [(k.lower(), v) for k, v in http.headers.items()]
        identity = ""
        if self.tokens is not None:
            found = self.tokens.identity(headers)
            if found is None:
                raise _Unauthenticated()
            identity = found
        ctx = _Context(headers)
        if self.max_pending and self.handed - self.started >= self.max_pending:
            raise _Status(grpc.StatusCode.UNAVAILABLE, BUSY_MESSAGE)
        surface = None if method in PROBES else self.surface

        async def run() -> Any:
            self.started += 1
            if surface is not None and not surface.admit():
                ctx.code, ctx.details = grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_MESSAGE
                return None
            CLIENT_IDENTITY.set(identity)
            try:
                return await getattr(self.servicer, method)(request, ctx)
            except _Aborted:
                return None
            finally:
                if surface is not None:
                    surface.leave()

        self.handed += 1
        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return await asyncio.wrap_future(future), ctx

    def app(self) -> Starlette:
        def route(path: str, fn: Callable[[Request], Awaitable[Response]], method: str) -> Route:
            return Route(path, _guard(fn), methods=[method])

        m = "/v2/models/{name}"
        v = "/v2/models/{name}/versions/{version}"
        return Starlette(routes=[
            route("/v2/health/live", self.live, "GET"),
            route("/v2/health/ready", self.ready, "GET"),
            route("/v2", self.server_metadata, "GET"),
            route("/v2/models/stats", self.model_stats, "GET"),  # before {name} matches it
            route(m, self.model_metadata, "GET"), route(v, self.model_metadata, "GET"),
            route(f"{m}/ready", self.model_ready, "GET"),
            route(f"{v}/ready", self.model_ready, "GET"),
            route(f"{m}/infer", self.infer, "POST"), route(f"{v}/infer", self.infer, "POST"),
            # Triton's REST side of its extensions (the same servicer methods as gRPC).
            route(f"{m}/config", self.model_config, "GET"),
            route(f"{v}/config", self.model_config, "GET"),
            route(f"{m}/stats", self.model_stats, "GET"),
            route(f"{v}/stats", self.model_stats, "GET"),
            route("/v2/repository/index", self.repository_index, "POST"),
        ])  # fmt: skip

    async def _answer(self, method: str, request: Any, http: Request) -> Any:
        answer, ctx = await self.call(method, request, http)
        if ctx.code != grpc.StatusCode.OK:
            raise _Status(ctx.code, ctx.details)
        return answer

    async def live(self, http: Request) -> Response:
        r = await self._answer("ServerLive", oip.ServerLiveRequest(), http)
        return JSONResponse({"live": r.live}, status_code=200 if r.live else 503)

    async def ready(self, http: Request) -> Response:
        r = await self._answer("ServerReady", oip.ServerReadyRequest(), http)
        return JSONResponse({"ready": r.ready}, status_code=200 if r.ready else 503)

    async def server_metadata(self, http: Request) -> Response:
        r = await self._answer("ServerMetadata", oip.ServerMetadataRequest(), http)
        return JSONResponse({"name": r.name, "version": r.version,
                             "extensions": list(r.extensions)})  # fmt: skip

    async def model_metadata(self, http: Request) -> Response:
        p = http.path_params
        req = oip.ModelMetadataRequest(name=p["name"], version=p.get("version", ""))
        r = await self._answer("ModelMetadata", req, http)

        def tensors(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        return JSONResponse({"name": r.name, "versions": list(r.versions),
                             "platform": r.platform, "inputs": tensors(r.inputs),
                             "outputs": tensors(r.outputs)})  # fmt: skip

    async def model_ready(self, http: Request) -> Response:
        p = http.path_params
        req = oip.ModelReadyRequest(name=p["name"], version=p.get("version", ""))
        r = await self._answer("ModelReady", req, http)
        return JSONResponse({"name": p["name"], "ready": r.ready},
                            status_code=200 if r.ready else 400)  # fmt: skip

    async def model_config(self, http: Request) -> Response:
        p = http.path_params
        req = oip.ModelConfigRequest(name=p["name"], version=p.get("version", ""))
        r = await self._answer("ModelConfig", req, http)
        return JSONResponse(_json_of(r.config))

    async def model_stats(self, http: Request) -> Response:
        p = http.path_params
        req = oip.ModelStatisticsRequest(name=p.get("name", ""), version=p.get("version", ""))
        r = await self._answer("ModelStatistics", req, http)
        return JSONResponse(_json_of(r))

    async def repository_index(self, http: Request) -> Response:
        raw = await http.body()
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        ready = doc.get("ready", False) if isinstance(doc, dict) else None
        if not isinstance(ready, bool):
            raise BadRequest("the body must be a JSON object; ready: true or false")
        req = oip.RepositoryIndexRequest(ready=ready)
        r = await self._answer("RepositoryIndex", req, http)
        return JSONResponse([_json_of(m) for m in r.models])  # Triton answers a list

    async def infer(self, http: Request) -> Response:
        raw = await http.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
        binary = b""
        header_length = http.headers.get(HEADER_LENGTH)
        if header_length is not None:  # Triton's binary-tensor extension
            try:
                n = int(header_length)
            except ValueError:
                n = -1
            if not 0 < n <= len(raw):
                raise BadRequest(
                    f"Inference-Header-Content-Length: {header_length!r} is not a length within "
                    f"the body's {len(raw)} bytes"
                )
            raw, binary = raw[:n], raw[n:]
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        p = http.path_params
        req, binary_out = infer_request(doc, p["name"], p.get("version", ""), binary)
        answer = await self._answer("ModelInfer", req, http)
        if isinstance(answer, bytes):
            answer = oip.ModelInferResponse.FromString(answer)
        body, chunks = infer_response(answer, binary_out)
        if not chunks:
            return JSONResponse(body)
        header = JSONResponse(body).body
        return Response(
            b"".join((header, *chunks)),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )


class _Unauthenticated(Exception):
    pass


class _Status(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


def _guard(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except _Unauthenticated:
            return _error(401, "needs Authorization: Bearer <a client token of this gateway>")
        except _Status as exc:
            return _error(HTTP_STATUS.get(exc.code, 500), exc.message)
        except Exception:
            log.exception("OIP REST call failed")
            return _error(500, "internal error")

    return endpoint


class OipHttpServer:
    """uvicorn serving ``OipHttp`` on a thread of its own, with its own event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self.port = 0
        self._thread = threading.Thread(
            target=self._run, args=(app, host, port), name="oip-http", daemon=True
        )
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self, app: Starlette, host: str, port: int) -> None:
        from abgate.http_server import serve_http

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(serve_http(app, host, port, reuse_port=True))
            self.port = self._server.port
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_until_complete(self._server.task)
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(setattr, self._server.server, "should_exit", True)
        self._thread.join(15)
