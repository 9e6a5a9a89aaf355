"""The gateway's end of the config stream against a scripted evaluator (a real gRPC server the
test drives message by message) and a real gateway: each experiment of a snapshot is applied or
rejected alone and the ACK lists every experiment's status; a rejected experiment keeps its last
good version; what cannot be pinned on one experiment (a stale version, the serving version with
other content, a malformed snapshot) is NACKed whole and changes nothing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from abgate.addresses import free_port
from abgate.client import GatewayClient, RpcFailure
from abgate.v1 import control_pb2 as cpb
from abgate.v1 import control_pb2_grpc as cpb_grpc
from tests.conftest import DemoStore, InProcessGateway, gateway_settings


class ScriptedEvaluator(cpb_grpc.ConfigStreamServicer):
    """Sends what the test puts in ``outbox``; what the gateway answers lands in ``answers``."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[cpb.ConfigSnapshot] = queue.Queue()
        self.answers: queue.Queue[cpb.ConfigRequest] = queue.Queue()

    def StreamConfig(self, request_iterator: Any, context: Any) -> Iterator[cpb.ConfigSnapshot]:
        def read() -> None:
            try:
                for req in request_iterator:
                    self.answers.put(req)
            except grpc.RpcError:
                pass  # the stream ends when the gateway stops

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                yield self.outbox.get(timeout=0.05)
            except queue.Empty:
                continue

    def send(self, version: int, *experiments: cpb.ExperimentConfig) -> cpb.ConfigRequest:
        """One snapshot; the gateway's answer to it."""
        nonce = f"n{version}-{self.outbox.qsize()}-{id(experiments)}"
        self.outbox.put(cpb.ConfigSnapshot(version=version, nonce=nonce, experiments=experiments))
        while True:
            answer = self.answers.get(timeout=30)
            if answer.response_nonce == nonce:
                return answer


def experiment(name: str, version: int, *arms: tuple[str, str, float]) -> cpb.ExperimentConfig:
    return cpb.ExperimentConfig(
        name=name,
        salt=name,
        version=version,
        arms=[cpb.ArmConfig(name=n, model=m, weight=w) for n, m, w in arms],
    )


def statuses(answer: cpb.ConfigRequest) -> dict[str, tuple[int, int, str]]:
    """name -> (version served, version rejected, "STATUS: message" or "")."""
    out = {}
    for s in answer.experiments:
        error = ""
        if s.HasField("error_detail"):
            error = f"{grpc.StatusCode(_code(s.error_detail.code)).name}: {s.error_detail.message}"
        out[s.name] = (s.version, s.rejected_version, error)
    return out


def _code(number: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


@pytest.fixture
def stream(demo_store: DemoStore, tmp_path: Path) -> Iterator[tuple[ScriptedEvaluator, Any]]:
    servicer = ScriptedEvaluator()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    cpb_grpc.add_ConfigStreamServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    settings = gateway_settings(
        demo_store, tmp_path, config=None, evaluator=f"127.0.0.1:{port}", evaluator_token="t",
        gateway_id="gw-scripted",
    )  # fmt: skip
    gw = InProcessGateway(settings)
    try:
        hello = servicer.answers.get(timeout=30)
        assert (hello.node_id, hello.version, hello.response_nonce) == ("gw-scripted", 0, "")
        yield servicer, gw
    finally:
        gw.close()
        server.stop(0)


def test_each_experiment_is_applied_or_rejected_alone(
    stream: tuple[ScriptedEvaluator, InProcessGateway], demo_store: DemoStore
) -> None:
    ev, gw = stream
    logreg, gbdt = (demo_store.metas[m].sha256 for m in ("demo-logreg", "demo-gbdt"))
    X = demo_store.X
    good = experiment("good", 3, ("control", logreg, 50), ("treatment", gbdt, 50))
    weights = experiment("weights", 2, ("control", logreg, 60), ("treatment", gbdt, 60))
    missing = experiment("missing", 7, ("control", logreg, 50), ("treatment", "f" * 64, 50))

    # One snapshot, three experiments: one applied, two rejected, all listed in the ACK.
    answer = ev.send(5, good, weights, missing)
    assert not answer.HasField("error_detail") and answer.version == 5
    got = statuses(answer)
    assert got["good"] == (3, 0, "")
    assert got["weights"] == (0, 2, "INVALID_ARGUMENT: arms weights sum to 120%, not 100%")
    assert got["missing"][:2] == (0, 7)
    assert got["missing"][2].startswith(f"NOT_FOUND: arms[1].model: {'f' * 64!r} is not in")
    with GatewayClient(gw.target) as client:
        served = [client.predict("good", f"u{i}", X[0]) for i in range(40)]
        assert {r["config_version"] for r in served} == {5}
        assert {r["arm"] for r in served} == {"control", "treatment"}
        for name in ("weights", "missing"):
            with pytest.raises(RpcFailure) as info:
                client.predict(name, "u0", X[0])
            assert info.value.code == grpc.StatusCode.UNAVAILABLE, name
        with pytest.raises(RpcFailure) as info:
            client.predict("never-sent", "u0", X[0])
        assert info.value.code == grpc.StatusCode.NOT_FOUND

    # A bad new version of "good" is rejected; its last good version keeps serving as it was.
    broken = experiment("good", 4, ("control", logreg, 0), ("treatment", "f" * 64, 100))
    answer = ev.send(6, broken, weights)
    got = statuses(answer)
    assert answer.version == 6 and got["good"][:2] == (3, 4)
    with GatewayClient(gw.target) as client:
        again = [client.predict("good", f"u{i}", X[0]) for i in range(40)]
    assert [(r["arm"], r["config_version"]) for r in again] == [(r["arm"], 5) for r in served], (
        "the last good version, with the snapshot it came from"
    )
    assert gw.server.subscriber is not None and gw.server.subscriber.rejected == 2

    # Snapshot-level failures are NACKed whole, naming the version still served.
    for version, experiments, status, message in (
        (4, (good,), "FAILED_PRECONDITION", "config version 4 is older than the serving 6"),
        (6, (good,), "FAILED_PRECONDITION", "config version 6 is already serving with"),
        (7, (good, good), "INVALID_ARGUMENT", "experiments[1].name 'good' is defined twice"),
    ):
        answer = ev.send(version, *experiments)
        assert answer.version == 6 and list(answer.experiments) == []
        detail = answer.error_detail
        assert grpc.StatusCode(_code(detail.code)).name == status
        assert detail.message.startswith(message), detail.message
    # The same snapshot again (a redial) is ACKed with the same statuses, retried.
    answer = ev.send(6, broken, weights)
    assert not answer.HasField("error_detail") and statuses(answer) == got
