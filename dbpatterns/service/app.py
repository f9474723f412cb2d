"""The Restate app serving every pattern; the ASGI entry point is ``dbpatterns.service.app:app``.

Serve it in one process (hypercorn ``-w 0``, or ``python -m dbpatterns.service.serve``, which runs
hypercorn or granian as ``DBPATTERNS_SERVICE_SERVER`` says), so the process the lab starts is the
process that serves, and can be killed, paused and restarted as a whole. Both servers speak
HTTP/2 cleartext with prior knowledge, so restate-server uses a bidirectional streaming
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import restate

from dbpatterns.config import get_settings
from dbpatterns.examples import invoices, shapes
from dbpatterns.patterns import SERVICES
from dbpatterns.service import db, failpoints, janitor

Scope = dict[str, Any]
Message = dict[str, Any]

log = logging.getLogger("dbpatterns")

# Only restate-server may call the handlers: it signs every request, the app checks the
# signature (401 otherwise). See dbpatterns/service/identity.py.
restate_app = restate.app(
    services=SERVICES, protocol="bidi", identity_keys=get_settings().service_identity_keys()
)


def configure_logging() -> None:
    """Handler logs (with invocation ids) and failpoint hits (with the pid) go to stderr."""
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s",
    )


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """ASGI entry: the Restate app, plus the lifespan events it does not handle itself.

    On startup the failpoint settings are checked against the catalogue (every pattern module
    has declared its points by now): a typo refuses the start, naming the bad entry, instead of
    failing every handler at its first hit. Only when a failpoint setting is given are the
    library's fault points routed to them. The connection pool opens on startup and closes on
    shutdown, so no connection is left half-open behind a stopped service. In between, the
    prepared-transaction janitor runs in the background (``DBPATTERNS_JANITOR_INTERVAL``; see
    ``dbpatterns.service.janitor``).
    """
    if scope["type"] != "lifespan":
        await restate_app(scope, receive, send)
        return
    janitor_task: asyncio.Task[None] | None = None
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                configure_logging()
                failpoints.check_settings(get_settings())
                failpoints.install_library_hook(get_settings())
                await db.open_pool()  # reads and validates the settings: a bad one stops the start
                invoices.use_pool(db.pool())  # the example services share the lab's pool
                shapes.use_pool(db.pool())
            except Exception as exc:
                log.error("the service refuses to start: %s", exc)
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            interval = get_settings().janitor_interval
            if interval.total_seconds() > 0:
                janitor_task = asyncio.create_task(
                    janitor.run_periodically(get_settings(), interval)
                )
            log.info("dbpatterns service started")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if janitor_task is not None:
                janitor_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await janitor_task
            invoices.use_pool(None)
            shapes.use_pool(None)
            await db.close_pool()
            log.info("dbpatterns service stopped")
            await send({"type": "lifespan.shutdown.complete"})
            return
