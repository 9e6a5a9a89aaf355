"""Bad input to a real evaluator's admin API and config stream: the token is checked before
the body is read, a call with two ``authorization`` headers is refused whichever holds the
token, an undecodable body is INVALID_ARGUMENT, and names and strings that no experiment can
hold (huge, NUL) get their status, never INTERNAL."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import grpc
import pytest

from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition

GOOD = ("authorization", f"Bearer {TOKEN}")
WRONG = ("authorization", "Bearer wrong")
ADMIN = "/abgate.v1.EvaluatorAdmin/"


def status(
    ev: InProcessEvaluator, method: str, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(ev.target) as channel:
        try:
            channel.unary_unary(ADMIN + method)(body, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_the_token_is_checked_before_the_body_is_decoded(evaluator: InProcessEvaluator) -> None:
    garbage = b"\xff\xff\x0a"
    unauthenticated = (grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    # Without the token the body is never deserialized: UNAUTHENTICATED, not INVALID_ARGUMENT.
    assert status(evaluator, "ListExperiments", garbage, ()) == unauthenticated
    assert status(evaluator, "ListExperiments", garbage, (WRONG,)) == unauthenticated
    assert status(evaluator, "ListExperiments", garbage, (GOOD,)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "undecodable request",
    )


def test_a_call_with_two_authorization_headers_is_refused(evaluator: InProcessEvaluator) -> None:
    listed = cpb.ListExperimentsRequest().SerializeToString()
    unauthenticated = (grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    for doubled in ((GOOD, WRONG), (WRONG, GOOD), (GOOD, GOOD)):
        assert status(evaluator, "ListExperiments", listed, doubled) == unauthenticated, doubled
    assert status(evaluator, "ListExperiments", listed, (GOOD,)) == (grpc.StatusCode.OK, "")


def test_names_and_strings_no_experiment_holds(evaluator: InProcessEvaluator) -> None:
    huge = "n" * (1 << 20)
    for name, shown in ((huge, f"{'n' * 64!r}… (1048576 bytes)"), ("a\x00b", "'a\\x00b'")):
        body = cpb.ExperimentRequest(name=name).SerializeToString()
        for method in ("GetExperiment", "Promote", "Archive"):
            assert status(evaluator, method, body, (GOOD,)) == (
                grpc.StatusCode.NOT_FOUND,
                f"name: unknown experiment {shown}",
            ), method

    create = cpb.CreateExperimentRequest(definition=cpb.ExperimentDefinition(name=huge))
    code, details = status(evaluator, "CreateExperiment", create.SerializeToString(), (GOOD,))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200, details
    assert details.startswith("definition.name: 'nnnn") and "(1048576 bytes)" in details


def test_nul_in_audited_strings_is_invalid_argument(
    evaluator: InProcessEvaluator, demo_store: DemoStore
) -> None:
    sha = demo_store.metas["demo-logreg"].sha256  # the evaluator checks it is in its store
    definition = ab_definition("nul", sha, sha)
    evaluator.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
    for field in ("reason", "arm", "actor"):
        body = cpb.ExperimentRequest(name="nul", **{field: "a\x00b"}).SerializeToString()
        assert status(evaluator, "Rollback", body, (GOOD,)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: must not contain NUL characters",
        ), field
    bad_salt = ab_definition("nul-salt", sha, sha, salt="a\x00b")
    bad_model = ab_definition("nul-model", sha, "b\x00")
    bad_shadow = ab_definition(
        "nul-shadow", sha, sha, shadows=[cpb.ShadowConfig(name="s", model="\x00")]
    )
    for definition, where in (
        (bad_salt, "definition.salt"),
        (bad_model, "definition.arms[1].model"),
        (bad_shadow, "definition.shadows[0].model"),
    ):
        body = cpb.CreateExperimentRequest(definition=definition).SerializeToString()
        assert status(evaluator, "CreateExperiment", body, (GOOD,)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: must not contain NUL characters",
        ), where
    # Nothing was written: the experiment is as created.
    view = evaluator.admin.call("GetExperiment", cpb.ExperimentRequest(name="nul"))
    assert (view.status, view.version) == ("running", 1)


def test_config_stream_refuses_a_node_id_the_database_cannot_hold(
    evaluator: InProcessEvaluator,
) -> None:
    with grpc.insecure_channel(evaluator.target) as channel:
        stream = channel.stream_stream(
            "/abgate.v1.ConfigStream/StreamConfig",
            request_serializer=cpb.ConfigRequest.SerializeToString,
            response_deserializer=cpb.ConfigSnapshot.FromString,
        )
        for node_id in ("gw\x00", "g" * 257):
            with pytest.raises(grpc.RpcError) as info:
                list(
                    stream(iter([cpb.ConfigRequest(node_id=node_id)]), metadata=(GOOD,), timeout=10)
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "node_id: at most 256 characters, no NUL"


def test_an_undecodable_ack_fails_alone_and_the_stream_stays(
    evaluator: InProcessEvaluator, demo_store: DemoStore
) -> None:
    """Issue #15, item 4, on the config stream: a message that does not parse after the hello
    is shown as the gateway's error and answered with the current snapshot again; the stream
    stays open and the next ACK clears the error. An undecodable hello ends the stream."""
    sha = demo_store.metas["demo-logreg"].sha256
    created = evaluator.admin.call(
        "CreateExperiment", cpb.CreateExperimentRequest(definition=ab_definition("acks", sha, sha))
    )
    sent: queue.Queue[bytes | None] = queue.Queue()

    def messages() -> Iterator[bytes]:
        while (m := sent.get()) is not None:
            yield m

    def gateway(node_id: str) -> cpb.GatewayState:
        listed = evaluator.admin.call("Gateways", cpb.GatewaysRequest())
        return next(g for g in listed.gateways if g.node_id == node_id)

    with grpc.insecure_channel(evaluator.target) as channel:
        raw_stream = channel.stream_stream("/abgate.v1.ConfigStream/StreamConfig")
        with pytest.raises(grpc.RpcError) as info:
            list(raw_stream(iter([b"\xff\xff\x0a"]), metadata=(GOOD,), timeout=10))
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "undecodable request",
        )
        sent.put(cpb.ConfigRequest(node_id="gw-garbled").SerializeToString())
        answers = raw_stream(messages(), metadata=(GOOD,), timeout=30)
        try:
            first = cpb.ConfigSnapshot.FromString(next(answers))
            assert first.version >= created.snapshot_version
            sent.put(b"\xff\xff\x0a")  # an ACK mangled on the way
            again = cpb.ConfigSnapshot.FromString(next(answers))
            assert again.version == first.version and again.nonce != first.nonce
            status_now = gateway("gw-garbled")
            assert status_now.connected
            assert status_now.last_error.startswith("INVALID_ARGUMENT: undecodable ACK/NACK")
            ack = cpb.ConfigRequest(
                node_id="gw-garbled", version=again.version, response_nonce=again.nonce
            )
            sent.put(ack.SerializeToString())
            deadline = time.monotonic() + 10
            while gateway("gw-garbled").last_error and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gateway("gw-garbled").last_error == ""
            assert evaluator.server.publisher.undecodable == 1
        finally:
            sent.put(None)
            answers.cancel()
