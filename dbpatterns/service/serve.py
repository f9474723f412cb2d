"""Serve the app under the ASGI server the settings choose: ``python -m dbpatterns.service.serve``.

``DBPATTERNS_SERVICE_SERVER`` picks ``granian`` (the default) or ``hypercorn``. granian is the
default because it was measured faster in one sitting on the same stack: its HTTP/2 is written
in Rust, where hypercorn frames in Python and writes each frame with its own ``send()``, which
cost both the service and restate-server CPU on every call (bench/README.md). Either way the
guarantees the lab builds on hold:

* **One process serves.** The chaos harness SIGKILLs, SIGSTOPs and restarts the process it
  started; a supervisor with a worker behind it would survive the first, and leave the second
  unseen. hypercorn runs with ``-w 0``. granian runs its *embedded* server
  (``granian.server.embed.Server``) on this process's event loop: granian's CLI starts a
  supervisor plus a worker process, and neither exited on SIGINT or SIGTERM once the SDK was
  loaded.
* **HTTP/2 cleartext with prior knowledge**, so restate-server registers the deployment as
  ``BidiStream`` over ``HTTP/2.0``. granian's ``auto`` HTTP mode takes both h2c with prior
  knowledge (restate-server) and HTTP/1.1 (the lab's ``/health`` probe).
* **The app's lifespan runs** (the pool opens and closes, the janitor runs): granian's ``asgi``
  interface drives it in embedded mode as well.
* **SIGINT stops it cleanly** (no new connections, then the lifespan's shutdown). The SDK takes
  SIGTERM over on its first request (``restate.server.install_shutdown_hook``: from then on
  SIGTERM only asks in-flight invocations to drain), so the lab stops the service with SIGINT.
* **It dies with its parent**: ``ServiceProcess`` sets a death signal before exec, and this
  module starts no process of its own (hypercorn replaces this one through ``exec``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Literal

from dbpatterns.config import Settings, get_settings

ServerName = Literal["hypercorn", "granian"]

log = logging.getLogger("dbpatterns.service.serve")

#: How long granian gets, after SIGINT, to finish its connections and run the lifespan's
#: shutdown before this process exits anyway. restate-server keeps its HTTP/2 connection open,
#: and a stream whose invocation is still running keeps it open longer; Restate retries what
#: an exit interrupts, as after any crash.
GRANIAN_STOP_GRACE_SECONDS = 5.0

#: granian's embedded server defaults to a backlog of 128, which also caps the requests one
#: worker serves at once (its "backpressure"); the CLI's default is 1,024. restate-server sends
#: every invocation as a stream of one connection, so the cap is the service's concurrency.
GRANIAN_BACKLOG = 1024


def hypercorn_argv(settings: Settings) -> list[str]:
    """hypercorn in one process (``-w 0``) with the lab's HTTP/2 settings
    (``dbpatterns.service.hypercorn_config``)."""
    return [
        sys.executable, "-m", "hypercorn", "dbpatterns.service.app:app",
        "--bind", f"{settings.bind_host}:{settings.service_port}",
        "--workers", "0",
        "--config", "python:dbpatterns.service.hypercorn_config",
    ]  # fmt: skip


def serve_argv() -> list[str]:
    """This module as a command: it reads the server, host and port from the settings."""
    return [sys.executable, "-m", "dbpatterns.service.serve"]


async def serve_granian(settings: Settings) -> int:
    """Serve the app with granian's embedded server until SIGINT (or SIGTERM before the SDK
    takes it over); the exit status: 0 after a clean stop, 1 if the app failed to start.

    A crash in the middle (SIGKILL) leaves nothing behind that a restart must clean: the
    listening socket goes with the process, the pool's connections close with it, and what a
    handler had not yet journaled Restate retries on the next process.
    """
    from granian.constants import HTTPModes, Interfaces
    from granian.errors import FatalError
    from granian.log import LogLevels
    from granian.server.embed import Server
    from restate.server import install_shutdown_hook

    from dbpatterns.service.app import app

    server = Server(
        app,
        address=settings.bind_host,
        port=settings.service_port,
        interface=Interfaces.ASGI,  # with the lifespan ("asginl" would skip it)
        http=HTTPModes.auto,  # h2c with prior knowledge for restate-server, HTTP/1.1 for /health
        websockets=False,
        backlog=GRANIAN_BACKLOG,
        log_level=LogLevels(settings.log_level.lower()),
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        if not stopping.is_set():
            log.info("stopping granian (pid %d)", os.getpid())
            stopping.set()
            server.stop()  # type: ignore[no-untyped-call]

    # Through the SDK's own registry of signal hooks: it keeps one dispatcher per signal and
    # loop, so when the SDK adds its SIGTERM hook on the first request it joins this one
    # instead of replacing it (loop.add_signal_handler keeps only the last handler).
    install_shutdown_hook(loop, stop, signal.SIGINT)
    install_shutdown_hook(loop, stop, signal.SIGTERM)

    serving = asyncio.create_task(server.serve())
    stop_requested = asyncio.create_task(stopping.wait())
    await asyncio.wait({serving, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    stop_requested.cancel()
    done, _ = await asyncio.wait({serving}, timeout=GRANIAN_STOP_GRACE_SECONDS)
    if not done:
        log.warning(
            "granian did not stop within %.0f s of the signal: exiting without the lifespan's "
            "shutdown, as a crash would",
            GRANIAN_STOP_GRACE_SECONDS,
        )
        logging.shutdown()
        os._exit(0)
    try:
        serving.result()
    except FatalError as exc:
        log.error("the service did not start under granian: %s", exc)
        return 1
    if server.interrupt_children:  # the worker ended without being asked to
        return 1
    return 0


def main() -> int:
    settings = get_settings()
    server: ServerName = settings.service_server
    if server == "hypercorn":
        argv = hypercorn_argv(settings)
        os.execv(argv[0], argv)  # the same process (pid, death signal), now hypercorn
    return asyncio.run(serve_granian(settings))


if __name__ == "__main__":
    sys.exit(main())
