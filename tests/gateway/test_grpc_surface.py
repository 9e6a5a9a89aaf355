"""The gateway's gRPC surface through a real gateway and real clients: health for every served
name with one lifecycle, reflection v1 and v1alpha over the same names, and /metrics counting
every call by method and status (rejections included) beside the process collector."""

from __future__ import annotations

import asyncio
import queue
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from abgate.oip.v2 import grpc_predict_v2_pb2 as oip_pb
from abgate.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from abgate.v1 import gateway_pb2 as pb
from gateway.config import load_config_file
from tests.conftest import DemoStore, GatewayProcess, InProcessGateway, free_port, gateway_settings

NATIVE = "abgate.v1.InferenceGateway"
OIP = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
GATEWAY_NAMES = {
    NATIVE,
    OIP,
    HEALTH,
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- helpers shared with tests/evaluator/test_grpc_surface.py ----------------------------------
def reflect(
    channel: grpc.Channel,
    requests: list[reflection_pb2.ServerReflectionRequest],
    version: str = "v1",
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[reflection_pb2.ServerReflectionResponse]:
    """A raw call of ``grpc.reflection.<version>.ServerReflection`` (v1 and v1alpha messages
    are wire-identical, so the v1alpha classes encode both)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10, metadata=metadata))


def listed_services(channel: grpc.Channel, version: str, **kw: Any) -> set[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = reflect(channel, [request], version, **kw)
    return {s.name for s in answer.list_services_response.service}


def file_defining(
    channel: grpc.Channel, symbol: str, **kw: Any
) -> descriptor_pb2.FileDescriptorProto:
    """The file descriptor reflection v1 returns for ``symbol`` (a service's full name)."""
    (answer,) = reflect(
        channel, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)], **kw
    )
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    (defining,) = [f for f in files if any(f"{f.package}.{s.name}" == symbol for s in f.service)]
    return defining


def health_status(channel: grpc.Channel, service: str) -> int | grpc.StatusCode:
    """The status health reports for ``service``, or the call's error code."""
    try:
        check = health_pb2_grpc.HealthStub(channel).Check
        return int(check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


def health_names(channel: grpc.Channel) -> set[str]:
    listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    return set(listed.statuses)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def handled(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    service: str,
    method: str,
    grpc_type: str = "UNARY",
) -> dict[str, float]:
    """Non-zero ``grpc_server_handled_total`` of one method by code."""
    out = {}
    for (name, labels), value in samples.items():
        d = dict(labels)
        if (
            name == "grpc_server_handled_total"
            and value
            and (d["grpc_service"], d["grpc_method"], d["grpc_type"])
            == (service, method, grpc_type)
        ):
            out[d["grpc_code"]] = value
    return out


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def assert_runtime_metrics(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    names = {name for name, _ in samples}
    assert set(PROCESS_METRICS) <= names
    assert "python_info" in names and "python_gc_collections_total" in names
    assert sample(samples, "process_open_fds") > 0


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def tensor(values: np.ndarray) -> pb.Tensor:
    arr = np.ascontiguousarray(values, dtype="<f4")
    return pb.Tensor(shape=list(arr.shape), raw=arr.tobytes(), datatype="FP32")


def code_of(fn: Callable[..., Any], *args: Any, **kw: Any) -> grpc.StatusCode:
    try:
        fn(*args, **kw)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


class OpenStream:
    """A PredictStream kept open: ``ask`` sends one message and waits for its answer."""

    def __init__(self, gw: InProcessGateway) -> None:
        self._requests: queue.Queue[pb.PredictRequest | None] = queue.Queue()
        self.call = gw.stub.PredictStream(iter(self._requests.get, None), timeout=30)

    def ask(self, request: pb.PredictRequest) -> Any:
        self._requests.put(request)
        return next(self.call)

    def close(self) -> list[Any]:
        self._requests.put(None)
        return list(self.call)


# -- health and reflection ----------------------------------------------------------------------
def test_health_and_reflection_answer_for_the_same_names(gateway: InProcessGateway) -> None:
    channel = gateway.channel
    names = listed_services(channel, "v1")
    assert names == listed_services(channel, "v1alpha") == GATEWAY_NAMES
    assert set(gateway.server.surface.names) == names
    assert health_names(channel) == names | {""}
    for name in (*names, ""):
        assert health_status(channel, name) == SERVING, name
    # The repro: the OIP service name used to answer NOT_FOUND.
    assert health_status(channel, OIP) == SERVING
    for unknown in ("no.such.Service", "abgate.v1.EvaluatorAdmin"):
        assert health_status(channel, unknown) == grpc.StatusCode.NOT_FOUND
    # Reflection v1 describes every service it lists (grpcurl's `describe`).
    assert file_defining(channel, NATIVE).name == "abgate/v1/gateway.proto"
    assert file_defining(channel, OIP).package == "inference"
    v1 = file_defining(channel, "grpc.reflection.v1.ServerReflection")
    assert v1.name == "grpc/reflection/v1/reflection.proto" and v1.package == "grpc.reflection.v1"
    assert file_defining(channel, HEALTH).package == "grpc.health.v1"


def test_every_name_follows_one_lifecycle_and_draining_calls_are_counted(
    demo_store: DemoStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.server

    settings = gateway_settings(demo_store, tmp_path, config=None, metrics_listen="127.0.0.1:0")
    gw = InProcessGateway(settings)
    try:
        channel = gw.channel
        names = listed_services(channel, "v1")
        request = pb.PredictRequest(
            experiment="demo", user_id="u1", features=tensor(demo_store.X[0])
        )
        # No config yet: every name NOT_SERVING, and Predict UNAVAILABLE.
        assert {n: health_status(channel, n) for n in (*names, "")} == dict.fromkeys(
            (*names, ""), NOT_SERVING
        )
        assert code_of(gw.stub.Predict, request, timeout=5) == grpc.StatusCode.UNAVAILABLE
        gw.call(gw.server._apply(load_config_file(demo_store.config)))
        assert all(health_status(channel, n) == SERVING for n in (*names, ""))
        assert code_of(gw.stub.Predict, request, timeout=5) == grpc.StatusCode.OK
        # Draining: NOT_SERVING everywhere while the gateway still answers (and refuses).
        monkeypatch.setattr(gateway.server, "DRAIN_LINGER", 3.0)
        stopping = asyncio.run_coroutine_threadsafe(gw.server.stop(grace=5.0), gw.loop)
        wait_until(lambda: health_status(channel, "") == NOT_SERVING)
        assert all(health_status(channel, n) == NOT_SERVING for n in names)
        assert code_of(gw.stub.Predict, request, timeout=5) == grpc.StatusCode.UNAVAILABLE
        samples = scrape(gw.server.metrics_port)
        assert handled(samples, NATIVE, "Predict") == {"OK": 1, "UNAVAILABLE": 2}
        assert handled(samples, HEALTH, "Check")["OK"] >= 3 * (len(names) + 1)
        stopping.result(30)
    finally:
        gw.close()


# -- metrics ------------------------------------------------------------------------------------
@pytest.fixture
def metered(demo_store: DemoStore, tmp_path: Path, fresh_db: str) -> Iterator[InProcessGateway]:
    """A logging gateway with /metrics and room for two calls in flight."""
    settings = gateway_settings(
        demo_store, tmp_path, fresh_db, metrics_listen="127.0.0.1:0", max_concurrent_rpcs=2
    )
    gw = InProcessGateway(settings)
    try:
        yield gw
    finally:
        gw.close()


def test_metrics_count_every_call_by_method_and_status(
    metered: InProcessGateway, demo_store: DemoStore
) -> None:
    gw = metered
    X = demo_store.X
    stub = gw.stub
    oip = oip_grpc.GRPCInferenceServiceStub(gw.channel)
    good = pb.PredictRequest(experiment="demo", user_id="u1", features=tensor(X[0]))
    bad = pb.PredictRequest(experiment="demo", user_id="u1", features=tensor(X[0][:3]))
    unknown = pb.PredictRequest(experiment="nope", user_id="u1", features=tensor(X[0]))
    infer = oip_pb.ModelInferRequest(
        model_name="demo",
        inputs=[
            oip_pb.ModelInferRequest.InferInputTensor(
                name="features", datatype="FP32", shape=[1, X.shape[1]]
            )
        ],
        raw_input_contents=[np.ascontiguousarray(X[:1], dtype="<f4").tobytes()],
    )
    infer.parameters["user_id"].string_param = "u1"
    ok, invalid = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.Predict, good, timeout=5) == ok
    assert code_of(stub.Predict, good, timeout=5) == ok
    assert code_of(stub.Predict, bad, timeout=5) == invalid
    assert code_of(stub.Predict, unknown, timeout=5) == grpc.StatusCode.NOT_FOUND
    garbage = gw.channel.unary_unary(f"/{NATIVE}/Predict")
    assert code_of(garbage, b"\xff\xff\xff", timeout=5) == invalid
    batch = pb.PredictBatchRequest(experiment="demo", user_ids=["a", "b"], features=tensor(X[:2]))
    assert code_of(stub.PredictBatch, batch, timeout=5) == ok
    assert (
        code_of(stub.PredictBatch, pb.PredictBatchRequest(experiment="demo"), timeout=5) == invalid
    )
    assert code_of(oip.ModelInfer, infer, timeout=5) == ok
    infer.model_name = "nope"
    assert code_of(oip.ModelInfer, infer, timeout=5) == grpc.StatusCode.NOT_FOUND
    infer.model_name = "demo"
    assert code_of(oip.ServerLive, oip_pb.ServerLiveRequest(), timeout=5) == ok
    outcome = pb.RecordOutcomeRequest(outcomes=[pb.Outcome(request_id="r-1", value=1.0)])
    assert code_of(stub.RecordOutcome, outcome, timeout=5) == ok

    # Overload: two open streams hold both slots (--max-concurrent-rpcs 2).
    wait_until(lambda: gw.server.surface.in_flight == 0)
    streams = [OpenStream(gw) for _ in range(2)]
    for i, s in enumerate(streams):
        assert s.ask(good).error_code == 0
        assert s.ask(unknown).error_code == grpc.StatusCode.NOT_FOUND.value[0], i
    assert gw.server.surface.in_flight == 2
    overloaded = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(stub.Predict, good, timeout=5) == overloaded
    assert code_of(oip.ModelInfer, infer, timeout=5) == overloaded
    assert health_status(gw.channel, "") == SERVING  # probes are never refused
    for s in streams:
        assert s.close() == []

    wait_until(lambda: gw.server.surface.in_flight == 0)
    samples = scrape(gw.server.metrics_port)
    assert handled(samples, NATIVE, "Predict") == {
        "OK": 2,
        "INVALID_ARGUMENT": 2,
        "NOT_FOUND": 1,
        "RESOURCE_EXHAUSTED": 1,
    }
    assert handled(samples, NATIVE, "PredictBatch") == {"OK": 1, "INVALID_ARGUMENT": 1}
    assert handled(samples, NATIVE, "RecordOutcome") == {"OK": 1}
    assert handled(samples, OIP, "ModelInfer") == {"OK": 1, "NOT_FOUND": 1, "RESOURCE_EXHAUSTED": 1}
    assert handled(samples, OIP, "ServerLive") == {"OK": 1}
    # A stream's per-message errors travel in its answers; the stream itself ends OK.
    assert handled(samples, NATIVE, "PredictStream", "BIDI_STREAMING") == {"OK": 2}
    assert handled(samples, HEALTH, "Check") == {"OK": 1}
    # The exact label sets, as py-grpc-prometheus writes them.
    predict = {"grpc_type": "UNARY", "grpc_service": NATIVE, "grpc_method": "Predict"}
    assert sample(samples, "grpc_server_started_total", **predict) == 6
    assert sample(samples, "grpc_server_handled_total", **predict, grpc_code="NOT_FOUND") == 1
    assert sample(samples, "grpc_server_handled_total", **predict, grpc_code="INTERNAL") == 0
    assert sample(samples, "grpc_server_handling_seconds_count", **predict) == 6
    assert sample(samples, "grpc_server_handling_seconds_bucket", **predict, le="+Inf") == 6
    assert sample(samples, "grpc_server_handling_seconds_sum", **predict) > 0
    stream = {"grpc_type": "BIDI_STREAMING", "grpc_service": NATIVE, "grpc_method": "PredictStream"}
    assert sample(samples, "grpc_server_msg_received_total", **stream) == 4
    assert sample(samples, "grpc_server_msg_sent_total", **stream) == 4
    assert ("grpc_server_msg_received_total", frozenset(predict.items())) not in samples
    # Every method of every served service is there from the start.
    methods = {
        (dict(labels)["grpc_service"], dict(labels)["grpc_method"])
        for name, labels in samples
        if name == "grpc_server_started_total"
    }
    assert {m for s, m in methods if s == NATIVE} == {
        "Predict", "PredictBatch", "PredictStream", "PredictBatchStream", "RecordOutcome",
    }  # fmt: skip
    assert {m for s, m in methods if s == OIP} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
    }  # fmt: skip
    assert {m for s, m in methods if s == HEALTH} == {"Check", "Watch", "List"}
    assert_runtime_metrics(samples)


@pytest.mark.slow
def test_each_worker_reports_its_own_process(
    demo_store: DemoStore, tmp_path: Path, fresh_db: str
) -> None:
    metrics_port = free_port()
    gp = GatewayProcess([
        "--config", str(demo_store.config), "--model-store", str(demo_store.root),
        "--state-dir", str(tmp_path / "state"), "--no-log-predictions", "--workers", "2",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ])  # fmt: skip
    gp.start()
    try:
        assert gp.proc is not None
        supervisor = gp.proc.pid
        for port in (metrics_port, metrics_port + 1):  # both workers up
            wait_until(lambda port=port: answers(port), timeout=60)  # type: ignore[misc]
        workers = children_of(supervisor)
        assert len(workers) == 2
        started = sorted(start_time_of(pid) for pid in workers)
        assert start_time_of(supervisor) < started[0]
        samples = [scrape(metrics_port), scrape(metrics_port + 1)]
        for s in samples:
            assert_runtime_metrics(s)
        # Each port reports one of the workers, not the supervisor.
        assert sorted(sample(s, "process_start_time_seconds") for s in samples) == started
        ids = {
            dict(labels)["gateway"]
            for s in samples
            for name, labels in s
            if name == "abgate_config_version"
        }
        assert len(ids) == 2 and all(i.endswith(("-w0", "-w1")) for i in ids)
    finally:
        rc, out = gp.stop()
    assert rc == 0, out[-2000:]


def answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            children.append(int(stat.parent.name))
    return children


def start_time_of(pid: int) -> float:
    """process_start_time_seconds as prometheus_client computes it for ``pid``."""
    collector = ProcessCollector(pid=lambda: str(pid), registry=None)
    for family in collector.collect():
        for s in family.samples:
            if s.name == "process_start_time_seconds":
                return float(s.value)
    raise AssertionError(f"no start time for pid {pid}")
