"""The evaluator's gRPC surface through a real evaluator and real clients: health for its
control-stream and admin services (and health and reflection themselves) with one lifecycle,
reflection v1 and v1alpha behind the token, and /metrics counting every call, refused ones
included."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from tests.conftest import DemoStore
from tests.evaluator.conftest import (
    TOKEN,
    InProcessEvaluator,
    ab_definition,
    evaluator_settings,
    rpc_code,
)
from tests.gateway.test_grpc_surface import (
    assert_runtime_metrics,
    file_defining,
    handled,
    health_names,
    health_status,
    listed_services,
    sample,
    scrape,
)

CONFIG_STREAM = "abgate.v1.ConfigStream"
ADMIN = "abgate.v1.EvaluatorAdmin"
HEALTH = "grpc.health.v1.Health"
EVALUATOR_NAMES = {
    CONFIG_STREAM,
    ADMIN,
    HEALTH,
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def metered(fresh_db: str, demo_store: DemoStore) -> Iterator[InProcessEvaluator]:
    ev = InProcessEvaluator(
        evaluator_settings(fresh_db, demo_store.root, metrics_listen="127.0.0.1:0")
    )
    try:
        yield ev
    finally:
        ev.close()


def test_health_and_reflection_answer_for_the_same_names(evaluator: InProcessEvaluator) -> None:
    with grpc.insecure_channel(evaluator.target) as channel:
        names = listed_services(channel, "v1", metadata=AUTH)
        assert names == listed_services(channel, "v1alpha", metadata=AUTH) == EVALUATOR_NAMES
        # Health needs no token; reflection, like everything else, does.
        assert health_names(channel) == names | {""}
        for name in (*names, ""):
            assert health_status(channel, name) == SERVING, name
        assert health_status(channel, "abgate.v1.InferenceGateway") == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            listed_services(channel, "v1")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert file_defining(channel, ADMIN, metadata=AUTH).name == "abgate/v1/control.proto"
        assert file_defining(channel, CONFIG_STREAM, metadata=AUTH).package == "abgate.v1"


def test_every_name_goes_not_serving_when_the_evaluator_drains(
    fresh_db: str, demo_store: DemoStore
) -> None:
    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root))
    channel = grpc.insecure_channel(ev.target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        names = sorted(EVALUATOR_NAMES | {""})
        # Watches opened before the stop see it: once draining, gRPC takes no new calls.
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=n), timeout=30) for n in names
        ]
        assert [next(w).status for w in watches] == [SERVING] * len(names)
        ev.close()
        assert [next(w).status for w in watches] == [NOT_SERVING] * len(names)
    finally:
        channel.close()
        ev.close()


def test_metrics_count_every_call_by_method_and_status(
    metered: InProcessEvaluator, demo_store: DemoStore
) -> None:
    ev = metered
    with grpc.insecure_channel(ev.target) as channel:
        admin = cpb_grpc.EvaluatorAdminStub(channel)
        listing = cpb.ListExperimentsRequest()
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(admin.ListExperiments, listing, timeout=5) == unauthenticated
        wrong = (("authorization", "Bearer wrong"),)
        assert rpc_code(admin.ListExperiments, listing, metadata=wrong, timeout=5) == (
            unauthenticated
        )
        admin.ListExperiments(listing, metadata=AUTH, timeout=5)
        missing = cpb.ExperimentRequest(name="nope")
        assert rpc_code(admin.GetExperiment, missing, metadata=AUTH, timeout=5) == (
            grpc.StatusCode.NOT_FOUND
        )
        assert rpc_code(admin.GetExperiment, cpb.ExperimentRequest(), metadata=AUTH, timeout=5) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        logreg, gbdt = (demo_store.metas[m].sha256 for m in ("demo-logreg", "demo-gbdt"))
        definition = ab_definition("exp", logreg, gbdt)
        created = admin.CreateExperiment(
            cpb.CreateExperimentRequest(definition=definition), metadata=AUTH, timeout=10
        )
        # A gateway's config stream: hello, the snapshot, an ACK, then it hangs up.
        requests: queue.Queue[cpb.ConfigRequest | None] = queue.Queue()
        stream = cpb_grpc.ConfigStreamStub(channel).StreamConfig(
            iter(requests.get, None), metadata=AUTH, timeout=30
        )
        requests.put(cpb.ConfigRequest(node_id="gw-1"))
        snapshot = next(stream)
        assert snapshot.version == created.snapshot_version
        requests.put(
            cpb.ConfigRequest(
                node_id="gw-1", version=snapshot.version, response_nonce=snapshot.nonce
            )
        )
        assert ev.call(ev.server.publisher.wait_acked(snapshot.version, timeout=10))
        requests.put(None)
        assert list(stream) == []
        # Without a token the stream is refused before its first message is read.
        refused = cpb_grpc.ConfigStreamStub(channel).StreamConfig(
            iter([cpb.ConfigRequest(node_id="intruder")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            next(refused)
        assert info.value.code() == unauthenticated
        assert health_status(channel, "") == SERVING  # no token needed
    samples = scrape(ev.server.metrics_port)
    assert handled(samples, ADMIN, "ListExperiments") == {"OK": 1, "UNAUTHENTICATED": 2}
    assert handled(samples, ADMIN, "GetExperiment") == {"NOT_FOUND": 1, "INVALID_ARGUMENT": 1}
    assert handled(samples, ADMIN, "CreateExperiment") == {"OK": 1}
    stream_type = "BIDI_STREAMING"
    assert handled(samples, CONFIG_STREAM, "StreamConfig", stream_type) == {
        "OK": 1,
        "UNAUTHENTICATED": 1,
    }
    assert handled(samples, HEALTH, "Check") == {"OK": 1}
    listing_labels = {"grpc_type": "UNARY", "grpc_service": ADMIN, "grpc_method": "ListExperiments"}
    assert sample(samples, "grpc_server_started_total", **listing_labels) == 3
    assert (
        sample(samples, "grpc_server_handled_total", **listing_labels, grpc_code="UNAUTHENTICATED")
        == 2
    )
    assert sample(samples, "grpc_server_handling_seconds_count", **listing_labels) == 3
    stream_labels = {
        "grpc_type": stream_type,
        "grpc_service": CONFIG_STREAM,
        "grpc_method": "StreamConfig",
    }
    assert sample(samples, "grpc_server_msg_received_total", **stream_labels) == 2
    assert sample(samples, "grpc_server_msg_sent_total", **stream_labels) == 1
    assert_runtime_metrics(samples)
