"""The delay proxy (``dbpatterns/measure/delay_proxy.py``) keeps the bytes, their order and the
ends of each direction, holds each direction half the round trip it was given, and counts the
round trips of each connection. Timings are checked as lower bounds, which a loaded machine
cannot break; the one upper bound is the least of several exchanges, against twice the round
trip (what a proxy that held the whole round trip each way would cost)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbpatterns.measure.delay_proxy import DelayProxy, RouteCounts, TurnCounter
from dbpatterns.stack import free_port, pid_alive

RTT_MS = 20.0


def test_a_round_trip_is_the_client_speaking_then_the_server_answering() -> None:
    counts = RouteCounts()
    turns = TurnCounter(counts)
    turns.read(from_client=False, size=8)  # a greeting nobody asked for: no round trip
    turns.read(from_client=True, size=5)
    turns.read(from_client=True, size=5)  # one request in two segments
    turns.read(from_client=False, size=3)
    turns.read(from_client=False, size=3)  # one answer in two segments
    assert counts.turns == 1
    for _ in range(2):
        turns.read(from_client=True, size=1)
        turns.read(from_client=False, size=1)
    assert counts.turns == 3
    assert (counts.bytes_to_server, counts.bytes_to_client) == (12, 16)


def test_round_trips_are_counted_per_connection_into_the_routes_total() -> None:
    counts = RouteCounts()
    first, second = TurnCounter(counts), TurnCounter(counts)
    first.read(from_client=True, size=1)
    second.read(from_client=True, size=1)  # does not merge with the first's request
    first.read(from_client=False, size=1)
    second.read(from_client=False, size=1)
    assert counts.turns == 2


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    """A loopback server that sends back what it reads, and ends its side when the client
    ended its own."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the module's tests are over
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def connect(proxy: DelayProxy) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", proxy.ports["echo"]), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def test_bytes_order_and_the_end_of_each_direction_cross_unchanged(
    echo_port: int, tmp_path: Path
) -> None:
    sent = os.urandom(2_000_000)
    received = bytearray()
    with DelayProxy(2, {"echo": ("127.0.0.1", echo_port)}, tmp_path / "proxy.log") as proxy:
        conn = connect(proxy)

        def read_all() -> None:
            while chunk := conn.recv(1 << 20):
                received.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        for start in range(0, len(sent), 100_000):  # many writes, each its own segments
            conn.sendall(sent[start : start + 100_000])
        conn.shutdown(socket.SHUT_WR)  # our end travels through; the echo's comes back
        reader.join(60)
        conn.close()
        assert not reader.is_alive(), "the end of the echo's side never came back"
        counts = proxy.counts()["echo"]
    assert bytes(received) == sent
    assert (counts.connections, counts.bytes_to_server, counts.bytes_to_client) == (
        1,
        len(sent),
        len(sent),
    )


def test_each_exchange_waits_at_least_the_round_trip_and_is_one_turn(
    echo_port: int, tmp_path: Path
) -> None:
    exchanges = 8
    took = []
    route = {"echo": ("127.0.0.1", echo_port)}
    with DelayProxy(RTT_MS, route, tmp_path / "proxy.log") as proxy, connect(proxy) as conn:
        before = proxy.counts()["echo"]
        for i in range(exchanges):
            message = f"ping {i}".encode()
            started = time.perf_counter()
            conn.sendall(message)
            assert conn.recv(100) == message
            took.append((time.perf_counter() - started) * 1000)
        after = proxy.counts()["echo"]
    assert after.turns - before.turns == exchanges
    assert min(took) >= RTT_MS, took  # half of it each way, never less
    assert min(took) < 2 * RTT_MS, took  # the option is the round trip, not each way's hold


def test_a_client_of_a_target_nobody_listens_on_is_cut_off(tmp_path: Path) -> None:
    with DelayProxy(0, {"echo": ("127.0.0.1", free_port())}, tmp_path / "proxy.log") as proxy:
        with connect(proxy) as conn:
            try:
                answer = conn.recv(10)
            except ConnectionResetError:
                answer = b""
        assert answer == b""
        assert proxy.counts()["echo"].connections == 0


def test_the_proxy_exits_once_the_process_that_started_it_closes_its_stdin(
    tmp_path: Path,
) -> None:
    proxy = DelayProxy(0, {"echo": ("127.0.0.1", free_port())}, tmp_path / "proxy.log")
    proxy.start()
    pid = proxy.pid
    assert pid_alive(pid)
    started = time.monotonic()
    proxy.stop()
    assert not pid_alive(pid)
    assert time.monotonic() - started < 5  # it left by itself, not killed after the wait
