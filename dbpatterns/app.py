"""The Restate app serving every pattern; the hypercorn entry point is ``dbpatterns.app:app``.

Run it with one worker process (``-w 0``) so the process the lab starts is the process that
serves, and can be killed, paused and restarted as a whole. hypercorn speaks HTTP/2 cleartext
with prior knowledge, so restate-server uses a bidirectional streaming connection.
"""

from __future__ import annotations

import logging
from typing import Any

import restate

from dbpatterns import db
from dbpatterns.patterns import SERVICES

Scope = dict[str, Any]
Message = dict[str, Any]

log = logging.getLogger("dbpatterns")

restate_app = restate.app(services=SERVICES, protocol="bidi")


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """ASGI entry: the Restate app, plus the lifespan events it does not handle itself.

    The database engine is closed on shutdown, so no connection is left half-open behind a
    stopped service.
    """
    if scope["type"] != "lifespan":
        await restate_app(scope, receive, send)
        return
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                db.engine()  # reads and validates the settings: a bad one stops the start
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            log.info("dbpatterns service started")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await db.dispose()
            await send({"type": "lifespan.shutdown.complete"})
            return
