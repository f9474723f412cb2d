"""A loopback TCP proxy that puts a round-trip time on a link and counts the link's round trips:
the bench's network (``./lab bench --rtt-ms N``, ``dbpatterns.measure.bench_network``).

What it guarantees, per proxied connection:

* **Bytes and order kept.** Each direction is one first-in, first-out line: every chunk read
  from one side is written to the other unchanged, in the order it was read.
* **RTT = N ms.** Each chunk is held at least N/2 ms from the moment the proxy read it, in each
  direction, so a request and its answer cost at least N ms more than on loopback. The hold is
  a lower bound: the event loop waits with ``select()``, whose timeout has microsecond
  precision (asyncio's default, ``epoll``, rounds every wait up to a whole millisecond, which
  would turn a 0.25 ms hold into about 1 ms), and the process asks the kernel for the least
  timer slack. What comes on top is the proxy's own forwarding, tens of microseconds on an idle
  machine, and whatever a loaded machine's scheduler adds.
* **Round trips counted, not derived.** A turn is a change, on one connection, from data that
  the client sent to data that the server sent, as the proxy reads them: the client speaks, the
  server answers. A statement in autocommit is one turn, however many segments carry it or its
  answer; so is a durable step's proposal and Restate's acknowledgement of it. Data a server
  sends before the client said anything (a greeting) is no turn. What a side sends without
  waiting for an answer (HTTP/2 PINGs, WINDOW_UPDATEs) adds a turn only if the other side
  answers it, as a PING is answered.
* **Ends travel like data.** A half-close (EOF) reaches the other side after the same hold,
  behind the bytes sent before it; a reset (an error) aborts the other side after them.

Not delayed: the TCP handshake (a client's connect returns at once and the proxy connects to
the target without a hold). The bench's connections (the service's pool, restate-server's
HTTP/2 connections) are opened once and kept.

It runs as a process of its own, so the bench reads its CPU from ``/proc`` like every other
part's: ``python -m dbpatterns.measure.delay_proxy --rtt-ms N --route NAME=LISTEN:HOST:PORT``
(``LISTEN`` 0: any free port). It listens on 127.0.0.1 only, prints one JSON line with the port
of each route, then answers each line ``counts`` read on stdin with one JSON line of the counts
of every route (``RouteCounts``), and exits when stdin closes: when the process that started it
is gone. ``DelayProxy`` is that process, seen from the bench. Only the standard library runs in
the proxy, so it starts fast and spends nothing on what it does not need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import select
import selectors
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

LISTEN_HOST = "127.0.0.1"
#: ``prctl`` option that sets the calling thread's timer slack (in ns; the default is 50,000).
PR_SET_TIMERSLACK = 29
#: How long the bench waits for the proxy to start or to answer ``counts``.
ANSWER_TIMEOUT_S = 10.0


class ProxyError(RuntimeError):
    pass


# --- counting ----------------------------------------------------------------------------------


@dataclass
class RouteCounts:
    """What crossed one route, over all its connections (those closed since included)."""

    connections: int = 0  # opened to the target
    turns: int = 0  # round trips: client data followed by server data, per connection
    bytes_to_server: int = 0
    bytes_to_client: int = 0


class TurnCounter:
    """The round trips of one connection, added to its route's ``RouteCounts``."""

    def __init__(self, counts: RouteCounts) -> None:
        self.counts = counts
        self.client_spoke = False  # client data came since the server's last

    def read(self, from_client: bool, size: int) -> None:
        """``size`` bytes read from the client's side (``from_client``) or the server's."""
        if from_client:
            self.counts.bytes_to_server += size
            self.client_spoke = True
        else:
            self.counts.bytes_to_client += size
            if self.client_spoke:
                self.counts.turns += 1
                self.client_spoke = False


# --- forwarding --------------------------------------------------------------------------------


class _End:
    """What follows the last chunk of a direction: ``eof`` (half-close), ``close``, ``reset``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


EOF, CLOSE, RESET = _End("eof"), _End("close"), _End("reset")


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the client's or the target's). What it reads goes to
    the other side through this side's delay line; when the other side cannot take more, this
    side stops reading (TCP's flow control then holds the sender back)."""

    def __init__(self, link: _Link, from_client: bool) -> None:
        self.link = link
        self.from_client = from_client
        self.transport: asyncio.Transport | None = None
        self.held: deque[tuple[float, bytes | _End]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False  # this side's reading is over (EOF, close or error)

    @property
    def other(self) -> _Side | None:
        return self.link.server if self.from_client else self.link.client

    # -- asyncio's calls
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.from_client:  # a client came: hold its bytes until the target's side is there
            transport.pause_reading()
            self.link.loop.create_task(self.link.connect())

    def data_received(self, data: bytes) -> None:
        self.link.turns.read(self.from_client, len(data))
        self.hold(data)

    def eof_received(self) -> bool:
        self.ended = True
        self.hold(EOF)
        return True  # keep the socket open for what the other side still sends

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.link.closing and not self.ended:
            self.ended = True
            self.hold(RESET if exc else CLOSE)

    def pause_writing(self) -> None:
        if self.other and self.other.transport:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other and self.other.transport:
            self.other.transport.resume_reading()

    # -- the delay line toward the other side
    def hold(self, item: bytes | _End) -> None:
        loop = self.link.loop
        self.held.append((loop.time() + self.link.hold_s, item))
        if self.timer is None:
            self.release()

    def release(self) -> None:
        """Write every held item whose time has come, in order; wake up for the next."""
        self.timer = None
        loop = self.link.loop
        while self.held and self.held[0][0] <= loop.time():
            _, item = self.held.popleft()
            self.link.deliver(self, item)
        if self.held:
            self.timer = loop.call_at(self.held[0][0], self.release)


class _Link:
    """One proxied connection: the client's side, the target's, and their turns."""

    def __init__(self, route: _Route, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self.loop = loop
        self.hold_s = route.hold_s
        self.turns = TurnCounter(route.counts)
        self.client = _Side(self, from_client=True)
        self.server = _Side(self, from_client=False)
        self.eofs_delivered = 0
        self.closing = False

    async def connect(self) -> None:
        """Open the target's side; the client's starts reading once it is open."""
        try:
            await self.loop.create_connection(lambda: self.server, *self.route.target)
        except OSError:
            self.close(abort=True)  # nobody there: the client sees a reset, as it would
            return
        self.route.counts.connections += 1
        if not self.closing and self.client.transport is not None:
            self.client.transport.resume_reading()

    def deliver(self, source: _Side, item: bytes | _End) -> None:
        sink = source.other
        if sink is None or sink.transport is None or sink.transport.is_closing():
            return
        if isinstance(item, bytes):
            sink.transport.write(item)
        elif item is EOF and sink.transport.can_write_eof():
            sink.transport.write_eof()
            self.eofs_delivered += 1
            if self.eofs_delivered == 2:  # both directions are over
                self.close(abort=False)
        else:
            self.close(abort=item is RESET)

    def close(self, abort: bool) -> None:
        self.closing = True
        for side in (self.client, self.server):
            if side.timer is not None:
                side.timer.cancel()
            if side.transport is not None:
                side.transport.abort() if abort else side.transport.close()


class _Route:
    """One listening port: each connection to it is proxied to ``target``."""

    def __init__(self, name: str, target: tuple[str, int], hold_s: float) -> None:
        self.name = name
        self.target = target
        self.hold_s = hold_s
        self.counts = RouteCounts()

    def accept(self) -> asyncio.Protocol:
        return _Link(self, asyncio.get_running_loop()).client


class _Control(asyncio.Protocol):
    """stdin: ``counts`` is answered on stdout; the end of stdin stops the proxy."""

    def __init__(self, routes: list[_Route], stop: asyncio.Future[None]) -> None:
        self.routes = routes
        self.stop = stop
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip() == b"counts":
                answer = {r.name: asdict(r.counts) for r in self.routes}
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stop.done():
            self.stop.set_result(None)


async def serve(routes: list[_Route], listen: Mapping[str, int]) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, finish)
    servers = {
        r.name: await loop.create_server(r.accept, LISTEN_HOST, listen[r.name]) for r in routes
    }
    ports = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
    sys.stdout.write(json.dumps({"ports": ports}) + "\n")
    sys.stdout.flush()
    await loop.connect_read_pipe(lambda: _Control(routes, stop), sys.stdin)
    await stop
    for server in servers.values():
        server.close()


def least_timer_slack() -> None:
    """Ask Linux to wake this process's timers on time rather than up to 50 µs late."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def route_spec(text: str) -> tuple[str, int, tuple[str, int]]:
    """``NAME=LISTEN:HOST:PORT`` -> (name, listen port, (host, port))."""
    name, _, rest = text.partition("=")
    listen, host, port = rest.split(":")
    return name, int(listen), (host, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbpatterns.measure.delay_proxy")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added, in ms")
    parser.add_argument("--route", action="append", type=route_spec, required=True)
    args = parser.parse_args(argv)
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must be 0 or more")
    hold_s = args.rtt_ms / 2 / 1000
    routes = [_Route(name, target, hold_s) for name, _, target in args.route]
    least_timer_slack()
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(routes, {name: port for name, port, _ in args.route}))
    finally:
        loop.close()
    return 0


# --- driven from the bench ---------------------------------------------------------------------


class DelayProxy:
    """The proxy as a child process of the bench: its PID (for its CPU), the port of each route,
    and its counts on request. ``routes``: name -> (host, port) of the target."""

    def __init__(
        self, rtt_ms: float, routes: Mapping[str, tuple[str, int]], log_path: Path
    ) -> None:
        self.rtt_ms = rtt_ms
        self.routes = dict(routes)
        self.log_path = log_path
        self.ports: dict[str, int] = {}
        self._popen: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self._process().pid

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "dbpatterns.measure.delay_proxy",
            "--rtt-ms",
            f"{self.rtt_ms:g}",
        ]
        for name, (host, port) in self.routes.items():
            argv += ["--route", f"{name}=0:{host}:{port}"]
        return argv

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            self._popen = subprocess.Popen(
                self.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops it
            )
        self.ports = {name: int(port) for name, port in self._answer()["ports"].items()}

    def counts(self) -> dict[str, RouteCounts]:
        """The counts of every route so far."""
        stdin = self._process().stdin
        assert stdin is not None
        stdin.write("counts\n")
        stdin.flush()
        return {name: RouteCounts(**c) for name, c in self._answer().items()}

    def _process(self) -> subprocess.Popen[str]:
        if self._popen is None:
            raise ProxyError("the delay proxy is not started")
        return self._popen

    def _answer(self) -> dict[str, Any]:
        out: IO[str] | None = self._process().stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], ANSWER_TIMEOUT_S)
        line = out.readline() if ready else ""
        if not line:
            self.stop()
            raise ProxyError(f"the delay proxy did not answer; its log: {self.log_path}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        """Close its stdin (it exits), and kill it if it has not after a few seconds."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
