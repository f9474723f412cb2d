"""A TCP proxy owned by the harness: Restate's deployment URI points here, not at a service.

Restate talks HTTP/2 cleartext to the service; raw TCP forwarding carries it unchanged. The
proxy gives the harness two powers a real network has and a plain process does not:

* ``switch(port)``: new connections go to another service process (the standby), so a retry can
  run while the first process is paused;
* ``partition(port)``: every connection to that process is cut on Restate's side (Restate sees
  the connection drop and retries the attempt elsewhere) while the process's own side stays
  open and silent. A paused process, once resumed, finds its connection still there: nothing
  tells it that Restate gave up, so it carries on as a zombie would. ``release(port)`` closes
  that side too (after the zombie has had its chance).

The proxy runs its own event loop in a daemon thread; its methods are called from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from dbpatterns.testing.loop_thread import LoopThread

log = logging.getLogger("dbpatterns.testing.proxy")

CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: Restate's side (client) and the service's side (upstream)."""

    target_port: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    partitioned: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class SwitchableProxy(LoopThread):
    """Listens on ``host:listen_port`` and forwards each new connection to ``host:target_port``."""

    def __init__(self, host: str, listen_port: int, target_port: int) -> None:
        super().__init__("switchable-proxy")
        self.host = host
        self.listen_port = listen_port
        self.target_port = target_port
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.listen_port}"

    def switch(self, target_port: int) -> None:
        """New connections go to ``target_port``; open ones stay where they are."""
        if target_port != self.target_port:
            log.info("proxy: new connections now go to port %d", target_port)
        self.target_port = target_port

    def partition(self, target_port: int, *, reset: bool = True) -> int:
        """Cut Restate off from the process on ``target_port``; returns how many connections.

        With ``reset`` Restate's side is reset at once (Restate sees the connection drop);
        without it, Restate's side stays open and silent, as behind a dead network, until
        ``reset_restate_side``."""
        return int(self._call(self._partition(target_port, reset)))

    def reset_restate_side(self, target_port: int) -> int:
        """Reset Restate's side of the partitioned connections to ``target_port``."""
        return int(self._call(self._reset(target_port)))

    def release(self, target_port: int) -> None:
        """Close whatever is left of the connections to ``target_port``."""
        self._call(self._release(target_port))

    def connections(self, target_port: int) -> int:
        return sum(1 for link in list(self._links) if link.target_port == target_port)

    # --- inside the proxy's loop --------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._close_both(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.target_port
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, port)
        except OSError:
            writer.close()  # nobody there: Restate sees a refused attempt and retries
            return
        link = _Link(port, writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link, toward_service=True)),
            asyncio.create_task(self._pipe(up_reader, writer, link, toward_service=False)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: _Link,
        *,
        toward_service: bool,
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                if link.partitioned:
                    continue  # a partitioned process talks into the void
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if toward_service:
                # Restate's side ended. A partitioned link keeps the service's side open (and
                # silent) until ``release``; otherwise the close travels on, as TCP's would.
                if not link.partitioned:
                    with contextlib.suppress(Exception):
                        sink.close()
            else:
                # The service's side ended (it closed, or died): end both.
                for writer in (sink, link.upstream):
                    with contextlib.suppress(Exception):
                        writer.close()

    async def _partition(self, target_port: int, reset: bool) -> int:
        cut = 0
        for link in list(self._links):
            if link.target_port == target_port and not link.partitioned:
                link.partitioned = True
                if reset:
                    link.client.transport.abort()  # Restate's side: a reset, as a network would
                cut += 1
        return cut

    async def _reset(self, target_port: int) -> int:
        cut = 0
        for link in list(self._links):
            if link.target_port == target_port and link.partitioned:
                link.client.transport.abort()
                cut += 1
        return cut

    async def _release(self, target_port: int) -> None:
        for link in list(self._links):
            if link.target_port == target_port:
                self._close_both(link)

    def _close_both(self, link: _Link) -> None:
        link.partitioned = False
        for writer in (link.client, link.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for task in link.tasks:
            task.cancel()
        self._links.discard(link)
