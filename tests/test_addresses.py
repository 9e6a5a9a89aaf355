"""``abgate.addresses``: the address forms users type, accepted or refused in one line naming
the flag, and the bind check that reports a taken port before gRPC's C-core would."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from abgate.addresses import check_bindable, check_target, split_listen
from abgate.errors import Unavailable


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50051",
        "localhost:1",
        "gateway.example.com:65535",
        "[::1]:50051",
        "dns:///localhost:50051",
        "dns://8.8.8.8/gateway.example.com:443",
        "dns:localhost:50051",
        "ipv4:127.0.0.1:1,127.0.0.2:2",
        "ipv6:[::1]:50051",
        "unix:/tmp/abgate.sock",
        "unix:///tmp/abgate.sock",
        "unix:relative.sock",
        "unix-abstract:abgate",
    ],
)
def test_targets_users_type_are_accepted_unchanged(target: str) -> None:
    assert check_target(target, "--target") == target


@pytest.mark.parametrize(
    ("target", "message"),
    [
        # gRPC would dial :443 for each of these.
        ("localhost", "--target 'localhost' needs a port (HOST:PORT)"),
        ("localhost:", "--target 'localhost:' needs a port (HOST:PORT)"),
        ("dns:///localhost", "--target 'dns:///localhost' needs a port"),
        ("[::1]", "--target '[::1]' needs a port ([ADDR]:PORT)"),
        ("::1:50051", "put an IPv6 address in brackets"),
        ("ipv4:127.0.0.1", "needs a port"),
        ("localhost:http", "--target 'localhost:http': port 'http' is not a number"),
        ("localhost:0", "port 0 is out of range (1-65535)"),
        ("localhost:65536", "port 65536 is out of range (1-65535)"),
        (":50051", "--target ':50051' needs a host"),
        ("[::1:50051", "'[' without ']'"),
        ("[::1]50051", "expected ':PORT' after ']'"),
        ("http://localhost:50051", "unknown scheme 'http'"),
        ("unix:", "needs a socket path"),
        ("unix:///", "needs a socket path"),
        ("", "--target is empty"),
    ],
)
def test_targets_without_a_usable_port_are_refused_naming_the_flag(
    target: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        check_target(target, "--target")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":50051", ("0.0.0.0", 50051)),
        ("[::1]:50051", ("::1", 50051)),
        ("::1:50051", ("::1", 50051)),  # unambiguous here: split on the last colon
    ],
)
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("nope", "--metrics-listen 'nope' needs a port (HOST:PORT)"),
        # gRPC would bind 99999 - 65536 = 34463 without a word.
        ("127.0.0.1:99999", "port 99999 is out of range (0-65535)"),
        ("127.0.0.1:x", "port 'x' is not a number"),
    ],
)
def test_bad_listen_addresses_name_the_flag(listen: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        split_listen(listen, "--metrics-listen")
    assert str(info.value).startswith("--metrics-listen ") and message in str(info.value)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process's listener holds (as a plain server binds: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_held_port_is_unavailable(held_port: int) -> None:
    with pytest.raises(Unavailable) as info:
        check_bindable("127.0.0.1", held_port, "--listen")
    assert str(info.value) == (
        f"--listen 127.0.0.1:{held_port}: cannot listen: address already in use "
        "(another process listens on this port)"
    )
    # SO_REUSEPORT does not let a worker join a listener that did not set it.
    with pytest.raises(Unavailable):
        check_bindable("127.0.0.1", held_port, "--listen", reuse_port=True)


def test_workers_share_a_port_only_with_so_reuseport() -> None:
    with socket.socket() as sibling:  # worker 0 of --workers N, already serving
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sibling.bind(("127.0.0.1", 0))
        sibling.listen()
        port = int(sibling.getsockname()[1])
        check_bindable("127.0.0.1", port, "--listen", reuse_port=True)  # worker 1
        with pytest.raises(Unavailable):  # a lone gateway must not join the group
            check_bindable("127.0.0.1", port, "--listen")


def test_free_ports_and_port_zero_pass() -> None:
    check_bindable("127.0.0.1", 0, "--listen")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    check_bindable("127.0.0.1", free, "--listen")


def test_an_address_of_another_machine_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="is not an address of this machine"):
        check_bindable("192.0.2.1", 50051, "--listen")  # TEST-NET-1, never local
