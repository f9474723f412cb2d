"""The harness's loopback network partitions exactly what it is told to: a connection is told
apart by the process that opened it, a cut-off member's bytes (and its new connections) wait
until the heal and are then delivered, none lost, and anything that is not a member (the
harness looking on) is never cut. Also: how the node-fault cells under load compute their
recovery time from the operations' answers."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from chaos.cluster_cells import LOAD_AFTER_S, LOAD_BEFORE_S
from chaos.handlers import IDEMPOTENCY_UPDATE
from chaos.network import LoopbackNetwork, owner_of, socket_inode
from chaos.node_faults import recovery
from chaos.verdict import Trial
from chaos.workload import Operation
from dbpatterns.stack import free_port
from dbpatterns.testing.verdict import Outcome

ME = "me"


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A server that sends back whatever it receives."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    server.close()


def network_to(port: int, members: dict[str, int]) -> LoopbackNetwork:
    network = LoopbackNetwork("127.0.0.1", {"echo": port}, lambda: members)
    network.start()
    return network


def connect(network: LoopbackNetwork) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", network.ports["echo"]), timeout=5)
    s.settimeout(0.5)
    return s


def test_the_owner_of_a_socket_is_found_by_its_ports() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        inode = socket_inode(client.getsockname()[1], server.getsockname()[1])
        assert inode is not None
        assert owner_of(inode, {"other": 1, ME: os.getpid()}) == ME
        assert owner_of(inode, {"other": 1}) is None
        assert socket_inode(client.getsockname()[1], free_port()) is None
    finally:
        client.close()
        server.close()


def test_a_connection_is_counted_by_the_member_that_opened_it(echo_port: int) -> None:
    network = network_to(echo_port, {ME: os.getpid()})
    try:
        with connect(network) as s:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
        assert network.accepted == {(ME, "echo"): 1}
    finally:
        network.close()


def test_a_member_cut_off_gets_nothing_through_until_the_heal_and_then_everything(
    echo_port: int,
) -> None:
    network = network_to(echo_port, {ME: os.getpid()})
    try:
        with connect(network) as s:
            s.sendall(b"before")
            assert s.recv(16) == b"before"
            assert network.isolate(ME) == 1  # one connection went silent
            s.sendall(b"during")
            with pytest.raises(TimeoutError):
                s.recv(16)
            with connect(network) as opened_during:  # accepted, then hangs
                opened_during.sendall(b"new")
                with pytest.raises(TimeoutError):
                    opened_during.recv(16)
                network.heal(ME)
                assert opened_during.recv(16) == b"new"
            assert s.recv(16) == b"during"  # held, not lost
    finally:
        network.close()


def test_a_process_that_is_not_a_member_is_never_cut_off(echo_port: int) -> None:
    network = network_to(echo_port, {"n1": 1})  # this process is the harness, looking on
    try:
        network.isolate("n1")
        with connect(network) as s:
            s.sendall(b"observer")
            assert s.recv(16) == b"observer"
        assert network.accepted == {("?", "echo"): 1}
    finally:
        network.close()


def answered_at(*seconds: float) -> list[Operation]:
    """Acknowledged operations answered ``seconds`` after a fault at 1000.0."""
    return [
        Operation(IDEMPOTENCY_UPDATE, "u", 0, outcome=Outcome.ACKNOWLEDGED, resolved_at=1000.0 + t)
        for t in seconds
    ]


def test_recovery_is_the_end_of_the_last_second_below_the_share_of_the_rate_before() -> None:
    rate = 10
    before = [-LOAD_BEFORE_S + 1 + i / rate for i in range(int((LOAD_BEFORE_S - 1) * rate))]
    # Seconds 0-2 after the fault: 2 answers each; then the backlog, then the steady rate.
    after = [k + 0.5 for k in range(3) for _ in range(2)] + [3.1] * 30
    after += [k + i / rate for k in range(4, int(LOAD_AFTER_S)) for i in range(rate)]
    trial = Trial()
    recovery(answered_at(*before, *after), 1000.0, trial)
    assert trial.counts["completed_per_s_before"] == rate
    assert trial.counts["completed_per_s_lowest_after"] == 2
    assert trial.counts["recovery_ms"] == 3000
    assert not trial.problems


def test_a_rate_that_never_fell_needs_no_recovery_and_one_that_stopped_is_a_problem() -> None:
    seconds = range(-int(LOAD_BEFORE_S) + 1, int(LOAD_AFTER_S))
    steady = [k + i / 10 for k in seconds for i in range(10)]
    trial = Trial()
    recovery(answered_at(*steady), 1000.0, trial)
    assert trial.counts["recovery_ms"] == 0
    stopped = [t for t in steady if t < 0]
    trial = Trial()
    recovery(answered_at(*stopped), 1000.0, trial)
    assert trial.problems
