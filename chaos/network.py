"""The loopback network of a Restate cluster under test, and partitions of it.

Every node of a chaos cluster advertises an address of this network's, not its own port: node
to node traffic (the replicated log, the metadata store, the cluster controller) and the nodes'
calls to the service all cross a proxy here. Each proxy knows where a connection goes (the node
or the service behind it) and finds out where it comes from: the process that owns the other
end of the socket, read from ``/proc`` (``/proc/net/tcp`` gives the socket's inode, a node's
``/proc/<pid>/fd`` holds it; ``dbpatterns.stack.procfs`` reads both). So one address per node
is enough to cut any pair.

``isolate(node)`` partitions one node from the others and from the service: every connection it
has with them, and every one it opens, stops carrying bytes in both directions, as behind a
dead switch. Nothing is closed or reset: the bytes sent meanwhile wait (TCP's flow control stops
the sender once the proxy's buffers are full), a close waits too, and ``heal`` lets it all
through, as TCP's retransmits would once the link is back. Peers find out only by their own
timeouts. Connections from anything else (the harness, ``restatectl``) are never cut: they are
the observer, not part of the cluster; the workload's calls reach every ingress directly.

The one difference from a real partition: a connection opened during it is accepted (the
proxy's kernel answers the handshake) and then hangs, where a real network would let the
handshake time out. Either way nothing gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dbpatterns.stack import procfs
from dbpatterns.stack.processes import free_port
from dbpatterns.testing.loop_thread import LoopThread

log = logging.getLogger("chaos.network")

CHUNK = 65536
SERVICE = "service"


def socket_inode(client_port: int, server_port: int) -> int | None:
    """The inode of the socket connected from local port ``client_port`` to ``server_port``,
    from the kernel's table of IPv4 TCP sockets; None if there is none (it closed meanwhile)."""
    for found in procfs.tcp_sockets(("tcp",)):
        if (found.local_port, found.remote_port) == (client_port, server_port) and found.inode:
            return found.inode
    return None


def owner_of(inode: int, pids: Mapping[str, int]) -> str | None:
    """Which of ``pids`` (name -> pid) holds socket ``inode`` open; None if none does."""
    for name, pid in pids.items():
        if procfs.holds_socket(pid, inode):
            return name
    return None


@dataclass(eq=False)
class _Link:
    """One proxied connection, from ``origin`` (a node's name; None: not a node) to
    ``target``."""

    origin: str | None
    target: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class LoopbackNetwork(LoopThread):
    """One proxy per destination (each node's fabric port, and the service), on free loopback
    ports; ``address(name)`` is what ``name``'s peers are told to dial."""

    def __init__(
        self,
        host: str,
        destinations: Mapping[str, int],
        members: Callable[[], Mapping[str, int]],
    ) -> None:
        """``destinations``: name -> the port it listens on; ``members``: node name -> pid of
        the nodes now (asked on each connection: a node started again has a new pid)."""
        super().__init__("chaos-network")
        self.host = host
        self.destinations = dict(destinations)
        self.members = members
        self.ports = {name: free_port(host) for name in self.destinations}
        self.isolated: set[str] = set()
        #: Connections accepted per (origin, target), origin "?" when not a node.
        self.accepted: dict[tuple[str, str], int] = {}
        self._links: set[_Link] = set()
        self._changed = asyncio.Event()  # set (and replaced) whenever ``isolated`` changes
        self._servers: list[asyncio.Server] = []

    def address(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    def isolate(self, node: str) -> int:
        """Cut ``node`` off from every other node and from the service; returns how many open
        connections went silent."""
        return int(self._call(self._set(node, cut=True)))

    def heal(self, node: str) -> int:
        """Let ``node``'s traffic through again; returns how many held connections go on."""
        return int(self._call(self._set(node, cut=False)))

    def links(self, node: str) -> int:
        """Open connections to or from ``node``."""
        return sum(1 for link in list(self._links) if node in (link.origin, link.target))

    # --- inside the network's loop -------------------------------------------------------------

    async def _listen(self) -> None:
        for name in self.destinations:
            server = await asyncio.start_server(
                functools.partial(self._accept, name), self.host, self.ports[name]
            )
            self._servers.append(server)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        self.isolated.clear()
        self._changed.set()  # held links wake up and find their connections aborted
        for link in list(self._links):
            for writer in link.writers:
                writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _set(self, node: str, *, cut: bool) -> int:
        if cut:
            self.isolated.add(node)
        else:
            self.isolated.discard(node)
        self._changed.set()  # wakes every held link to look again
        self._changed = asyncio.Event()
        return sum(1 for link in self._links if node in (link.origin, link.target))

    def _cut(self, link: _Link) -> bool:
        """Is ``link`` across the partition? Only node-to-node and node-to-service links are."""
        if link.origin is None:
            return False
        return link.origin in self.isolated or link.target in self.isolated

    async def _until_open(self, link: _Link) -> None:
        while self._cut(link):
            await self._changed.wait()

    async def _origin(self, writer: asyncio.StreamWriter, target: str) -> str | None:
        client_port = int(writer.get_extra_info("peername")[1])
        server_port = self.ports[target]

        def look() -> str | None:
            inode = socket_inode(client_port, server_port)
            return None if inode is None else owner_of(inode, self.members())

        return await asyncio.to_thread(look)

    async def _accept(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        link = _Link(await self._origin(writer, target), target, [writer])
        key = (link.origin or "?", target)
        self.accepted[key] = self.accepted.get(key, 0) + 1
        self._links.add(link)
        try:
            await self._until_open(link)  # a connection opened across the partition hangs
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.host, self.destinations[target]
                )
            except OSError:
                writer.transport.abort()  # nobody listens there: a refused connection
                return
            link.writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, link),
                self._pipe(up_reader, writer, link),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)
            for end in link.writers:
                with contextlib.suppress(Exception):
                    end.close()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy ``source`` to ``sink`` while the link is open; across a partition, hold every
        chunk, and the end of the stream, until it heals."""
        try:
            while data := await source.read(CHUNK):
                await self._until_open(link)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            await self._until_open(link)
            with contextlib.suppress(Exception):
                sink.transport.abort()  # a reset travels on as a reset
            return
        await self._until_open(link)
        with contextlib.suppress(Exception):
            if sink.can_write_eof():
                sink.write_eof()  # half-close: the other direction may still carry bytes
            else:
                sink.close()
