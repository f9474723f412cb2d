"""Serving a Restate app whose handlers use a pool: the pool is open before the first request
and closed after the last.

Guarantee: with ``app = with_pool(restate.app([...]), pool)``, every handler finds ``pool``
open, the first request of a freshly started process included (the tokens' private expiry, due
after a restart, may be the first thing a process runs), and the server's stop closes it, so
no session is left behind a stopped service. A pool that fails to open refuses the start,
and the server says why.

How: through the ASGI lifespan, which the server runs before it takes requests and after it
has stopped taking them. ``restate.app`` (restate-sdk 1.3) implements no lifespan: it raises on
the lifespan scope, on purpose, and hypercorn logs that as ``ASGI Framework Lifespan error,
continuing without Lifespan support`` (harmless, but it reads as a fault, and there is no
hypercorn option to skip the lifespan). ``with_pool`` answers the lifespan events itself and
hands every other scope to the app untouched.

Needs a server that runs the ASGI lifespan: hypercorn, uvicorn and granian do. Where none runs
(a serverless adapter), open the pool in an invocation context manager instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dbpatterns.exactly_once._types import Pool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application, such as ``restate.app([...])`` returns.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def with_pool(app: ASGIApp, pool: Pool) -> ASGIApp:
    """``app``, with ``pool`` opened when the server starts and closed when it stops."""

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await pool.open()
                except Exception as exc:
                    failed = f"the connection pool did not open: {exc!r}"
                    await send({"type": "lifespan.startup.failed", "message": failed})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return served
