"""``with_pool``: the pool is open before the server takes its first request and closed when it
stops; a pool that cannot open refuses the start; every other scope reaches the app untouched.
Driven through the ASGI lifespan as a server drives it, on a real pool."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from dbpatterns.exactly_once import with_pool
from dbpatterns.exactly_once.asgi import ASGIApp, Message, Receive, Scope, Send


class Server:
    """The lifespan side of an ASGI server: sends events, records what the app answers."""

    def __init__(self, *events: str) -> None:
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        for event in events:
            self.events.put_nowait({"type": event})
        self.answers: list[Message] = []
        self.answered = asyncio.Event()

    async def receive(self) -> Message:
        return await self.events.get()

    async def send(self, message: Message) -> None:
        self.answers.append(dict(message))
        self.answered.set()

    async def lifespan(self, app: ASGIApp) -> None:
        await app({"type": "lifespan"}, self.receive, self.send)


def test_the_pool_opens_at_startup_and_closes_at_shutdown(database_url: str) -> None:
    async def run() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, open=False, min_size=1)
        app = with_pool(unreachable, pool)
        server = Server("lifespan.startup")
        lifespan = asyncio.create_task(server.lifespan(app))
        await asyncio.wait_for(server.answered.wait(), 10)
        assert server.answers == [{"type": "lifespan.startup.complete"}]
        async with pool.connection() as conn:  # open: no PoolClosed
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        server.events.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)
        assert server.answers[-1] == {"type": "lifespan.shutdown.complete"}
        assert pool.closed

    asyncio.run(run())


def test_a_pool_that_cannot_open_refuses_the_start_and_says_why(database_url: str) -> None:
    async def run() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, open=False)
        await pool.open()
        await pool.close()  # a closed pool cannot be opened again
        server = Server("lifespan.startup")
        await asyncio.wait_for(server.lifespan(with_pool(unreachable, pool)), 10)
        (answer,) = server.answers
        assert answer["type"] == "lifespan.startup.failed"
        assert "the connection pool did not open" in answer["message"]

    asyncio.run(run())


def test_every_other_scope_reaches_the_app_untouched(database_url: str) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def run() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, open=False)
        server = Server()
        scope: Scope = {"type": "http", "path": "/health"}
        await with_pool(app, pool)(scope, server.receive, server.send)
        assert seen == [(scope, server.receive, server.send)]
        assert pool.closed  # an HTTP request does not open it: the lifespan does

    asyncio.run(run())


async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError(f"the app got the {scope['type']} scope")
