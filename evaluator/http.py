"""The evaluator's HTTP/JSON API (issue #17): off by default, served with ``--http-listen``.

Every endpoint that mirrors the admin API parses its JSON into the same protobuf request the
gRPC call takes and calls the same ``AdminServicer`` method, with a context whose ``abort``
raises ``HttpAbort`` instead of ending a gRPC call: one code path, so the validation, the
audit rows and the errors are those of gRPC, with the gRPC status mapped to an HTTP status
(``HTTP_STATUS``). The bearer tokens are the admin API's (``TokenAuth``): a read-only token
may call the reads (``Endpoint.writes`` False) and gets 403 for the rest, as gRPC answers it
PERMISSION_DENIED; ``/openapi.json`` and ``/healthz`` are readable without one.

Starlette with uvicorn, not FastAPI: the request and response types are the admin API's protobuf
messages, whose JSON mapping (``json_format``) is already the contract; FastAPI would want a
pydantic model beside each of them, a second schema and a second validation path to keep in
step. The OpenAPI document is generated from the same messages' descriptors
(``openapi_document``). uvicorn runs on the evaluator's own event loop, beside grpc.aio.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from abgate.errors import AbgateError, InvalidArgument, shown
from abgate.v1 import control_pb2 as cpb
from evaluator.experiments import CANARY_STAGES
from evaluator.service import (
    ADMIN,
    READ_METHODS,
    AdminServicer,
    TokenAuth,
    message_json,
    verdict_json,
    view_json,
)

log = logging.getLogger(__name__)

API = "/api/v1"
MAX_BODY = 1 << 20  # bytes of a request body
OPEN_PATHS = frozenset({"/openapi.json", "/healthz", "/favicon.ico"})

# gRPC status -> HTTP status, as Google's API design guide maps them (google.rpc.Code).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class Json(JSONResponse):
    """A JSON answer; NaN and infinities (an unbounded CI end, a rate of no rows) are null, as
    JSON has neither."""

    def render(self, content: Any) -> bytes:
        return super().render(_finite_json(content))


class HttpAbort(Exception):
    """What ``_Context.abort`` raises: the gRPC status and message the call would have ended
    with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the admin servicer uses."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise HttpAbort(code, details)

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def error(status: int, message: str, code: str | None = None) -> Json:
    """The one error shape: ``{"error": {"code": 400, "status": "INVALID_ARGUMENT",
    "message": "definition.arms: …"}}``."""
    name = code or _BY_HTTP.get(status, "UNKNOWN")
    return Json({"error": {"code": status, "status": name, "message": message}}, status_code=status)


def _abort_response(exc: HttpAbort) -> Json:
    return error(HTTP_STATUS.get(exc.code, 500), exc.message, exc.code.name)


# -- request parsing ----------------------------------------------------------------------------
async def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty); InvalidArgument otherwise."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise _TooLarge()
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _TooLarge()
    if not raw.strip():
        return {}
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind not in ("application/json", ""):
        raise _Unsupported(kind)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the body must be a JSON object, not {type(doc).__name__}")
    return doc


_M = TypeVar("_M", bound=Message)


class _TooLarge(Exception):
    pass


class _Unsupported(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


def _parse(doc: Mapping[str, Any], cls: type[_M], where: str = "the body") -> _M:
    """``doc`` as message ``cls`` (proto field names or their JSON names); unknown fields and
    wrong types are InvalidArgument naming them, as json_format reports them."""
    msg = cls()
    try:
        json_format.ParseDict(dict(doc), msg)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    return msg


def _with_name(doc: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """``doc`` with the path's experiment name in ``key``; a body naming another is refused."""
    given = doc.get(key)
    if given not in (None, "", name):
        raise InvalidArgument(f"the body names {shown(given)}, the path {shown(name)}", key)
    return {**doc, key: name}


def _flag(request: Request, key: str) -> bool:
    value = request.query_params.get(key, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise InvalidArgument(f"must be true or false, not {shown(value)}", key)
    return value in ("true", "1", "")  # ?include_archived alone means true


def _int(request: Request, key: str, default: int) -> int:
    value = request.query_params.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"must be an integer, not {shown(value)}", key) from None


# -- the app ------------------------------------------------------------------------------------
Handler = Callable[["HttpApi", Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One HTTP endpoint: the route, what it does, and for the OpenAPI document its body and
    answer (a protobuf message, or a schema name in ``SCHEMAS``)."""

    method: str
    path: str
    summary: str
    handler: Handler
    body: type[Message] | str | None = None
    answer: type[Message] | str | None = None
    tags: tuple[str, ...] = ("experiments",)
    status: int = 200
    alias_of: str = ""  # the native path this one maps (README "HTTP/JSON API")
    reads: bool = False  # a POST that changes nothing (a question, a test on given figures)

    @property
    def writes(self) -> bool:
        """Needs the admin token (a read-only one gets 403 before the body is read)."""
        return self.method != "GET" and not self.reads


_FORBIDDEN = "this token is read-only: {} needs the admin token"
_ROLE = "abgate.role"  # the scope key the token's role is kept under


class HttpApi:
    """The endpoints over one ``AdminServicer`` (and the evaluator, for the config snapshot)."""

    def __init__(
        self,
        servicer: AdminServicer,
        auth: TokenAuth,
        snapshot: Callable[[], Any],
        timeline: Callable[[str, float | None], Awaitable[dict[str, Any]]] | None = None,
        ask: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.servicer = servicer
        self.auth = auth
        self.snapshot = snapshot  # the current cpb.ConfigSnapshot or None
        self.timeline = timeline  # (experiment, bucket seconds) -> the dashboard's series
        self.ask = ask  # question -> evaluator.nlq's answer

    async def rpc(self, method: str, request: Message, http: Request) -> Any:
        client = http.client
        peer = f"http:{client.host}:{client.port}" if client else "http"
        if (
            http.scope.get(_ROLE) != ADMIN
            and f"/abgate.v1.EvaluatorAdmin/{method}" not in READ_METHODS
        ):
            # The gRPC rule, for every admin method an endpoint reaches (``writes`` is checked
            # first; this keeps the two from drifting apart).
            raise HttpAbort(grpc.StatusCode.PERMISSION_DENIED, _FORBIDDEN.format(method))
        return await getattr(self.servicer, method)(request, _Context(peer))

    def app(self) -> ASGIApp:
        routes = [
            Route(e.path, _bind(self, e), methods=[e.method], name=f"{e.method} {e.path}")
            for e in ENDPOINTS
        ]
        routes.append(Route("/openapi.json", self._openapi, methods=["GET"]))
        routes.append(Route("/healthz", _healthz, methods=["GET"]))
        routes += _page_routes()
        app = Starlette(
            routes=routes,
            exception_handlers={
                HTTPException: _http_exception,  # type: ignore[dict-item]
                Exception: _internal,
            },
        )
        return _Authenticated(app, self.auth)

    async def _openapi(self, request: Request) -> Response:
        return Json(openapi_document())


def _bind(api: HttpApi, e: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if e.writes and request.scope.get(_ROLE) != ADMIN:
            return error(403, _FORBIDDEN.format(f"{e.method} {e.path}"))
        try:
            return await e.handler(api, request)
        except HttpAbort as exc:
            return _abort_response(exc)
        except InvalidArgument as exc:
            return error(400, exc.message)
        except _TooLarge:
            return error(413, f"the body is larger than {MAX_BODY} bytes")
        except _Unsupported as exc:
            return error(415, f"the body must be application/json, not {shown(exc.kind)}")

    return endpoint


async def _healthz(request: Request) -> Response:
    return Json({"status": "serving"})


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, str(exc.detail))


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
    return error(500, "internal error")


def _page_routes() -> list[Any]:
    """The dashboard's pages and static files (``evaluator.dashboard``): no data in them."""
    from starlette.responses import FileResponse
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from evaluator.dashboard import STATIC

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    async def experiment(request: Request) -> Response:
        return FileResponse(STATIC / "experiment.html", headers=_PAGE_HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        Route("/experiments/{name}", experiment, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


# The pages load only their own scripts (no CDN, no inline script) and talk only to this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'",
    "Cache-Control": "no-cache",
}


def is_open(path: str) -> bool:
    """Paths readable without a token: the OpenAPI document, health, and the dashboard's pages
    and static files (which hold no data)."""
    if path in OPEN_PATHS or path == "/" or path.startswith("/static/"):
        return True
    return path.startswith("/experiments/") and path.count("/") == 2


class _Authenticated:
    """Every path but the open ones (``is_open``) needs ``Authorization: Bearer <token>``;
    otherwise 401 with ``WWW-Authenticate: Bearer``, before the route runs or the body is
    read."""

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"]):
            headers = [(k.decode("latin-1"), v) for k, v in scope["headers"]]
            scope[_ROLE] = role = self.auth.role(headers)
            if role is None:
                response = error(
                    401, "needs Authorization: Bearer <the evaluator's admin or read-only token>"
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="abgate"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- handlers -----------------------------------------------------------------------------------
def _view(view: cpb.ExperimentView, status: int = 200) -> Json:
    return Json(view_json(view), status_code=status)


async def list_experiments(api: HttpApi, request: Request) -> Response:
    req = cpb.ListExperimentsRequest(include_archived=_flag(request, "include_archived"))
    answer = await api.rpc("ListExperiments", req, request)
    return Json({"experiments": [view_json(v) for v in answer.experiments]})


async def create_experiment(api: HttpApi, request: Request) -> Response:
    doc = await _json_object(request)
    # Either {"definition": {...}} (CreateExperimentRequest) or the definition itself.
    body = doc if set(doc) == {"definition"} else {"definition": doc}
    req = _parse(body, cpb.CreateExperimentRequest)
    return _view(await api.rpc("CreateExperiment", req, request), 201)


async def get_experiment(api: HttpApi, request: Request) -> Response:
    req = cpb.ExperimentRequest(name=request.path_params["name"])
    return _view(await api.rpc("GetExperiment", req, request))


def _operation(method: str) -> Handler:
    async def handler(api: HttpApi, request: Request) -> Response:
        doc = _with_name(await _json_object(request), "name", request.path_params["name"])
        req = _parse(doc, cpb.ExperimentRequest)
        return _view(await api.rpc(method, req, request))

    return handler


async def start_round(api: HttpApi, request: Request) -> Response:
    doc = _with_name(await _json_object(request), "experiment", request.path_params["name"])
    req = _parse(doc, cpb.StartRoundRequest)
    return _view(await api.rpc("StartRound", req, request), 201)


async def request_retrain(api: HttpApi, request: Request) -> Response:
    doc = _with_name(await _json_object(request), "experiment", request.path_params["name"])
    req = _parse(doc, cpb.RequestRetrainRequest)
    answer = await api.rpc("RequestRetrain", req, request)
    return Json(message_json(answer), status_code=201 if answer.created else 200)


async def history(api: HttpApi, request: Request) -> Response:
    req = cpb.HistoryRequest(
        name=request.path_params["name"],
        limit=_int(request, "limit", 0),
        steps_only=_flag(request, "steps_only") if "steps_only" in request.query_params else False,
    )
    answer = await api.rpc("History", req, request)
    return Json(message_json(answer))


async def gateways(api: HttpApi, request: Request) -> Response:
    answer = await api.rpc("Gateways", cpb.GatewaysRequest(), request)
    return Json(message_json(answer))


def results_of(view: dict[str, Any]) -> dict[str, Any]:
    """An experiment's results as the API answers them: per arm its rows, metric, CI and
    guardrail figures, the tests, SRM, guardrails, drift and decay, shadows (what the tick last
    computed; ``experiments show --json`` has the same under ``details``)."""
    details = view.get("details", {})
    stats = details.get("statistics", {})
    definition = view.get("definition", {})
    return {
        "experiment": definition.get("name"),
        "kind": definition.get("kind"),
        "status": view.get("status"),
        "version": view.get("version"),
        "round": details.get("round"),
        "weights": view.get("weights"),
        "metric": definition.get("primary_metric"),
        "verdict": view.get("verdict"),
        "arms": stats.get("arms", {}),
        "tests": stats.get("tests", {}),
        "srm": stats.get("srm"),
        "guardrails": stats.get("guardrails"),
        "canary": stats.get("canary"),
        "drift": details.get("drift", {}),
        "feature_drift": details.get("feature_drift", {}),
        "decay": details.get("decay", {}),
        "shadows": details.get("shadows", {}),
    }


async def results(api: HttpApi, request: Request) -> Response:
    req = cpb.ExperimentRequest(name=request.path_params["name"])
    view = await api.rpc("GetExperiment", req, request)
    doc = results_of(view_json(view))
    doc["verdict"] = verdict_json(view)
    return Json(doc)


async def timeline(api: HttpApi, request: Request) -> Response:
    from evaluator.results import parse_bucket_seconds

    name = request.path_params["name"]
    if api.timeline is None:
        raise HttpAbort(grpc.StatusCode.UNAVAILABLE, "no results database")
    try:
        bucket = parse_bucket_seconds(request.query_params.get("bucket_seconds", "auto"))
    except ValueError as exc:
        raise InvalidArgument(str(exc), "bucket_seconds") from None
    # The name is checked as the admin API checks it (NOT_FOUND for one it cannot hold).
    await api.rpc("GetExperiment", cpb.ExperimentRequest(name=name), request)
    try:
        return Json(await api.timeline(name, bucket))
    except AbgateError as exc:
        raise HttpAbort(exc.code, exc.message) from None


async def nlq(api: HttpApi, request: Request) -> Response:
    """{"question": "…"}: the answer of ``evaluator.nlq.ask`` (the same as ``abgate ask``)."""
    doc = await _json_object(request)
    question = doc.get("question")
    if not isinstance(question, str) or set(doc) != {"question"}:
        raise InvalidArgument('give {"question": "…"} and nothing else', "question")
    if api.ask is None:
        raise HttpAbort(grpc.StatusCode.UNAVAILABLE, "no results database")
    try:
        return Json(await api.ask(question))
    except AbgateError as exc:
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            from evaluator.nlq import EXAMPLES

            body = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": exc.message},
                    "understood": False, "examples": list(EXAMPLES)}  # fmt: skip
            return Json(body, status_code=400)
        raise HttpAbort(exc.code, exc.message) from None


async def canary_status(api: HttpApi, request: Request) -> Response:
    req = cpb.ExperimentRequest(name=request.path_params["name"])
    view = await api.rpc("GetExperiment", req, request)
    doc = view_json(view)
    if view.definition.kind != cpb.CANARY:
        kind = cpb.ExperimentKind.Name(view.definition.kind)
        return error(409, f"experiment {shown(req.name)} is {kind}, not a canary")
    stats = doc["details"].get("statistics", {})
    stage = int(doc["details"].get("canary_stage", 0))
    return Json(
        {
            "experiment": req.name,
            "status": doc["status"],
            "stage": stage,
            "share": CANARY_STAGES[stage],
            "stages": list(CANARY_STAGES),
            "weights": doc["weights"],
            "canary": stats.get("canary"),
            "verdict": verdict_json(view),
        }
    )


async def shadow_start(api: HttpApi, request: Request) -> Response:
    """{"experiment", "name", "model", "sample_rate"}: UpdateExperiment adding that shadow."""
    doc = await _json_object(request)
    experiment = doc.pop("experiment", None)
    if not isinstance(experiment, str) or not experiment:
        raise InvalidArgument("must name an experiment", "experiment")
    shadow = _parse(doc, cpb.ShadowConfig)
    req = cpb.ExperimentRequest(name=experiment, add_shadows=[shadow], reason="shadow start")
    return _view(await api.rpc("UpdateExperiment", req, request), 201)


async def shadow_stop(api: HttpApi, request: Request) -> Response:
    p = request.path_params
    req = cpb.ExperimentRequest(
        name=p["experiment"], remove_shadows=[p["shadow"]], reason="shadow stop"
    )
    return _view(await api.rpc("UpdateExperiment", req, request))


async def experiment_config(api: HttpApi, request: Request) -> Response:
    snapshot = api.snapshot()
    if snapshot is None:
        raise HttpAbort(grpc.StatusCode.UNAVAILABLE, "no config snapshot published yet")
    doc = message_json(snapshot)
    name = request.query_params.get("experiment")
    if name is not None:
        found = [e for e in doc.get("experiments", []) if e.get("name") == name]
        if not found:
            return error(404, f"no experiment {shown(name)} in snapshot {snapshot.version}")
        return Json({"version": doc.get("version"), "experiment": found[0]})
    return Json(doc)


async def stat_test(api: HttpApi, request: Request) -> Response:
    """A two-sample test on figures the caller gives (no experiment needed): the always-valid
    sequential test the policies run and Welch's fixed-horizon t-test beside it."""
    from evaluator.stats import ArmStats, fixed_horizon_t_test, sequential_test

    doc = await _json_object(request)
    unknown = set(doc) - {"control", "treatment", "alpha"}
    if unknown:
        raise InvalidArgument(f"unknown fields {sorted(unknown)}", "body")
    alpha = doc.get("alpha", 0.05)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise InvalidArgument(f"must be a number in (0, 1), not {shown(alpha)}", "alpha")
    arms = {k: _arm_stats(doc.get(k), k, ArmStats) for k in ("control", "treatment")}
    seq = sequential_test(arms["control"], arms["treatment"], float(alpha))
    _, p_fixed, ci_fixed = fixed_horizon_t_test(arms["control"], arms["treatment"], float(alpha))
    return Json(
        {
            "alpha": alpha,
            "arms": {
                k: {"n": a.n, "mean": a.mean, "variance": a.variance} for k, a in arms.items()
            },
            "effect_size": seq.effect,
            "sequential": {
                "p_value": seq.p_value,
                "ci": list(seq.ci),
                "relative_lift": seq.relative_lift,
                "lift_ci": list(seq.lift_ci),
                "significant": seq.significant,
            },
            "fixed_horizon": {
                "p_value": p_fixed,
                "ci": list(ci_fixed),
                "significant": p_fixed <= alpha,
            },
            "winner": (
                None if not seq.significant else "treatment" if seq.effect > 0 else "control"
            ),
        }
    )


def _arm_stats(doc: Any, key: str, cls: Any) -> Any:
    """One arm's figures: {"n", "successes"} (a rate), {"n", "mean", "sd"}, or the sums
    {"n", "sum", "sum_sq"}."""
    if not isinstance(doc, dict):
        raise InvalidArgument(
            'must be {"n", "successes"}, {"n", "mean", "sd"} or {"n", "sum", "sum_sq"}', key
        )
    n = doc.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidArgument(f"must be a whole number of rows >= 0, not {shown(n)}", f"{key}.n")

    def number(name: str) -> float:
        v = doc.get(name)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise InvalidArgument(f"must be a finite number, not {shown(v)}", f"{key}.{name}")
        return float(v)

    fields = set(doc) - {"n"}
    if fields == {"successes"}:
        s = number("successes")
        if not 0 <= s <= n:
            raise InvalidArgument(f"must be between 0 and n ({n})", f"{key}.successes")
        return cls(n, s, s)  # 0/1 values: Σx = Σx² = successes
    if fields == {"mean", "sd"}:
        mean, sd = number("mean"), number("sd")
        if sd < 0:
            raise InvalidArgument("must be >= 0", f"{key}.sd")
        total = mean * n
        return cls(n, total, sd * sd * max(n - 1, 0) + total * mean)
    if fields == {"sum", "sum_sq"}:
        return cls(n, number("sum"), number("sum_sq"))
    raise InvalidArgument(
        'give {"n", "successes"}, {"n", "mean", "sd"} or {"n", "sum", "sum_sq"}, not '
        f"{sorted(doc)}",
        key,
    )


def _finite_json(doc: Any) -> Any:
    """JSON has no NaN or infinity: null (an unbounded CI end, a lift of a zero mean)."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite_json(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_finite_json(v) for v in doc]
    return doc


E = f"{API}/experiments/{{name}}"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", f"{API}/experiments", "List experiments (?include_archived=true: all)",
             list_experiments, answer="ExperimentList"),
    Endpoint("POST", f"{API}/experiments", "Create an experiment (an ExperimentDefinition, or "
             "{\"definition\": …})", create_experiment, cpb.ExperimentDefinition,
             cpb.ExperimentView, status=201),
    Endpoint("GET", E, "One experiment, its verdict and details", get_experiment,
             answer=cpb.ExperimentView),
    Endpoint("PATCH", E, "Change an experiment in place: feature_sample_rate, drift levels, "
             "add_shadows, remove_shadows",
             _operation("UpdateExperiment"), cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/promote", "Send 100 % to an arm (default: the verdict's winner)",
             _operation("Promote"), cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/rollback", "Send 100 % back to control", _operation("Rollback"),
             cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/pause", "Stop deciding (the split stays)", _operation("Pause"),
             cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/resume", "Resume deciding", _operation("Resume"),
             cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/archive", "Take out of every snapshot, keep for audit",
             _operation("Archive"), cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/unarchive", "Back into the snapshot with its old buckets",
             _operation("Unarchive"), cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/approve", "Start a next round left awaiting approval",
             _operation("Approve"), cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/advance", "A running canary's next stage now (without its hold "
             "and rows; the last stage promotes)", _operation("AdvanceCanary"),
             cpb.ExperimentRequest, cpb.ExperimentView),
    Endpoint("POST", f"{E}/rounds", "The next round: the champion against a model",
             start_round, cpb.StartRoundRequest, cpb.ExperimentView, status=201),
    Endpoint("POST", f"{E}/retrain", "Queue a retrain of the champion", request_retrain,
             cpb.RequestRetrainRequest, cpb.RequestRetrainResponse, status=201),
    Endpoint("GET", f"{E}/results", "Results per arm: rows, metric, CI, p-value, SRM, "
             "guardrails, drift", results, answer="Results"),
    Endpoint("GET", f"{E}/timeline", "Results over time, per bucket (?bucket_seconds=auto): "
             "shares against the split, metric per arm, effect with its always-valid CI, "
             "shadow agreement, decisions, drift PSI (what the dashboard draws)", timeline,
             answer="Timeline"),
    Endpoint("GET", f"{E}/history", "The audit trail, oldest first (?limit=, ?steps_only=)",
             history, answer=cpb.HistoryResponse),
    Endpoint("GET", f"{API}/gateways", "Which config version every gateway runs", gateways,
             answer=cpb.GatewaysResponse, tags=("gateways",)),
    # The paths users of the A/B services in our field call (README "HTTP/JSON API").
    Endpoint("GET", f"{API}/ab-tests", "List A/B tests", list_experiments, answer="ExperimentList",
             tags=("compatible",), alias_of=f"GET {API}/experiments"),
    Endpoint("POST", f"{API}/ab-tests", "Create an A/B test", create_experiment,
             cpb.ExperimentDefinition, cpb.ExperimentView, tags=("compatible",), status=201,
             alias_of=f"POST {API}/experiments"),
    Endpoint("GET", f"{API}/ab-tests/{{name}}", "One A/B test", get_experiment,
             answer=cpb.ExperimentView, tags=("compatible",), alias_of=f"GET {E}"),
    Endpoint("GET", f"{API}/ab-tests/{{name}}/results", "An A/B test's results", results,
             answer="Results", tags=("compatible",), alias_of=f"GET {E}/results"),
    Endpoint("POST", f"{API}/ab-tests/{{name}}/promote", "Promote an arm",
             _operation("Promote"), cpb.ExperimentRequest, cpb.ExperimentView,
             tags=("compatible",), alias_of=f"POST {E}/promote"),
    Endpoint("POST", f"{API}/ab-tests/{{name}}/rollback", "Roll back to control",
             _operation("Rollback"), cpb.ExperimentRequest, cpb.ExperimentView,
             tags=("compatible",), alias_of=f"POST {E}/rollback"),
    Endpoint("GET", f"{API}/canary/{{name}}", "A canary's stage, share and rollback test",
             canary_status, answer="CanaryStatus", tags=("compatible",)),
    Endpoint("POST", f"{API}/canary/{{name}}/advance", "A canary's next stage now",
             _operation("AdvanceCanary"), cpb.ExperimentRequest, cpb.ExperimentView,
             tags=("compatible",), alias_of=f"POST {E}/advance"),
    Endpoint("POST", f"{API}/shadow", "Start mirroring an experiment's traffic to a shadow "
             "model: {experiment, name, model, sample_rate}", shadow_start, "ShadowStart",
             cpb.ExperimentView, tags=("compatible",), status=201,
             alias_of=f"PATCH {E} with add_shadows"),
    Endpoint("DELETE", f"{API}/shadow/{{experiment}}/{{shadow}}", "Stop mirroring to a shadow",
             shadow_stop, None, cpb.ExperimentView, tags=("compatible",),
             alias_of=f"PATCH {E} with remove_shadows"),
    Endpoint("POST", "/nlq", "A question in plain words ({\"question\": …}): winner, "
             "p_value, effect_size with its CI, recommendation, window and rows used",
             nlq, "Question", "Answer", tags=("questions",), reads=True),
    Endpoint("GET", "/experiment/config", "The config snapshot gateways run (?experiment=: "
             "one experiment's)", experiment_config, answer=cpb.ConfigSnapshot,
             tags=("compatible",)),
    Endpoint("POST", "/stat_test", "A two-sample test on given figures: always-valid "
             "sequential and fixed-horizon Welch", stat_test, "StatTestRequest", "StatTest",
             tags=("compatible",), reads=True),
)  # fmt: skip


# -- OpenAPI ------------------------------------------------------------------------------------
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_SINT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "description": "the gRPC status name"},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "ExperimentList": {
        "type": "object",
        "properties": {
            "experiments": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ExperimentView"},
            }
        },
    },
    "Results": {
        "type": "object",
        "description": "evaluator.http.results_of: the tick's statistics of each arm and test",
        "properties": {
            k: {"type": "object"}
            for k in (
                "arms",
                "tests",
                "srm",
                "guardrails",
                "canary",
                "drift",
                "feature_drift",
                "decay",
                "shadows",
                "verdict",
                "weights",
            )
        },
    },
    "Timeline": {
        "type": "object",
        "description": "evaluator.dashboard.timeline_json",
        "properties": {
            k: {"type": "object"}
            for k in ("shares", "split", "mean", "effect", "shadow_agreement", "drift")
        }
        | {"ends": {"type": "array", "items": {"type": "number"}}},
    },
    "CanaryStatus": {
        "type": "object",
        "properties": {
            "stage": {"type": "integer"},
            "share": {"type": "number"},
            "stages": {"type": "array", "items": {"type": "number"}},
            "weights": {"type": "object", "additionalProperties": {"type": "number"}},
            "canary": {"type": "object"},
            "verdict": {"type": "object"},
        },
    },
    "Question": {
        "type": "object",
        "required": ["question"],
        "properties": {"question": {"type": "string", "maxLength": 1000}},
    },
    "Answer": {
        "type": "object",
        "properties": {
            k: {"type": ["string", "number", "object", "array", "null"]}
            for k in (
                "winner",
                "p_value",
                "effect_size",
                "ci",
                "recommendation",
                "answer",
                "window",
                "n",
                "values",
                "metric",
                "arms",
                "understood",
            )
        },
    },
    "ShadowStart": {
        "type": "object",
        "required": ["experiment", "name", "model"],
        "properties": {
            "experiment": {"type": "string"},
            "name": {"type": "string"},
            "model": {"type": "string", "description": "sha256, id or id:version"},
            "sample_rate": {"type": "number", "default": 1.0},
        },
    },
    "StatTestRequest": {
        "type": "object",
        "required": ["control", "treatment"],
        "properties": {
            "control": {"$ref": "#/components/schemas/ArmFigures"},
            "treatment": {"$ref": "#/components/schemas/ArmFigures"},
            "alpha": {"type": "number", "default": 0.05},
        },
    },
    "ArmFigures": {
        "type": "object",
        "description": '{"n", "successes"}, {"n", "mean", "sd"} or {"n", "sum", "sum_sq"}',
        "properties": {
            k: {"type": "number"} for k in ("n", "successes", "mean", "sd", "sum", "sum_sq")
        },
        "required": ["n"],
    },
    "StatTest": {
        "type": "object",
        "properties": {k: {"type": "object"} for k in ("arms", "sequential", "fixed_horizon")}
        | {"effect_size": {"type": "number"}, "winner": {"type": ["string", "null"]}},
    },
}


def _message_schema(d: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """A $ref to message ``d``'s schema, added to ``defs`` (proto field names)."""
    if d.name in defs:
        return {"$ref": f"#/components/schemas/{d.name}"}
    defs[d.name] = {}  # a placeholder: recursive messages refer to it
    props: dict[str, Any] = {}
    for f in d.fields:
        props[f.name] = _field_schema(f, defs)
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if d.name == "ExperimentView":
        props.pop("details_json", None)
        props["details"] = {"type": "object", "description": "see abgate experiments show --json"}
    defs[d.name] = schema
    return {"$ref": f"#/components/schemas/{d.name}"}


def _field_schema(f: FieldDescriptor, defs: dict[str, Any]) -> dict[str, Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        value = f.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, defs)}
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        one = _message_schema(f.message_type, defs)
    elif f.type == FieldDescriptor.TYPE_ENUM:
        enum: Any = f.enum_type
        one = {"type": "string", "enum": [v.name for v in enum.values]}
    else:
        one = dict(_SCALARS[f.type])
    if f.is_repeated:
        return {"type": "array", "items": one}
    return one


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 of ``ENDPOINTS``, schemas from the protobuf descriptors."""
    defs: dict[str, Any] = {}
    paths: dict[str, Any] = {}

    def ref(x: type[Message] | str) -> dict[str, Any]:
        if isinstance(x, str):
            return {"$ref": f"#/components/schemas/{x}"}
        return _message_schema(x.DESCRIPTOR, defs)

    for e in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": f"{e.method.lower()}_{e.path.strip('/').replace('/', '_')}".replace(
                "{", ""
            ).replace("}", ""),
            "tags": list(e.tags),
            "security": [{"bearer": []}],
            "responses": {
                str(e.status): {
                    "description": "OK",
                    "content": {"application/json": {"schema": ref(e.answer or "Error")}},
                },
                **{
                    str(code): {
                        "description": _BY_HTTP[code],
                        "content": {"application/json": {"schema": ref("Error")}},
                    }
                    for code in (400, 401, 404, 409, 503)
                },
            },
        }
        if e.alias_of:
            op["description"] = f"The same as {e.alias_of}."
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ("name", "experiment", "shadow")
            if f"{{{p}}}" in e.path
        ]
        if params:
            op["parameters"] = params
        if e.body is not None:
            op["requestBody"] = {
                "required": e.body in ("StatTestRequest", cpb.ExperimentDefinition),
                "content": {"application/json": {"schema": ref(e.body)}},
            }
        paths.setdefault(e.path, {})[e.method.lower()] = op
    for path in sorted(OPEN_PATHS):
        paths[path] = {"get": {"summary": "no token needed", "security": [],
                               "responses": {"200": {"description": "OK"}}}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "abgate evaluator",
            "version": "1",
            "description": "The admin API over HTTP/JSON: the same calls, validation and "
            "errors as the gRPC abgate.v1.EvaluatorAdmin service (README: HTTP/JSON API).",
        },
        "paths": paths,
        "components": {
            "schemas": {**defs, **SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
