"""One process of the user's service under test: ``python -m dbpatterns.testing.served
module:app --port N --control FOLDER``.

It imports the user's ASGI app (from the working folder), routes the library's fault points
(``dbpatterns.exactly_once.faults``) through the faults armed in the control folder
(``dbpatterns.testing.control``), and serves the app over HTTP/2 cleartext with hypercorn on
127.0.0.1. The library's log lines (each clean-up's ending, each expiry) go to the process's log
at INFO, where a test finds its proof that a cancellation reached the handler.

Nothing of this runs in a user's service outside the kit: the hook is installed here only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dbpatterns.exactly_once import faults
from dbpatterns.testing.control import Action, Control


class InjectedFault(Exception):
    """The error an armed ``raise`` throws: not terminal, so Restate retries the attempt."""


def fault_hook(control: Control) -> faults.Hook:
    async def hook(point: str, invocation_id: str) -> None:
        fault = control.take(point)
        if fault is None:
            return
        logging.getLogger("dbpatterns.testing").warning(
            "fault %s at %s, invocation %s, pid %d", fault.action, point, invocation_id, os.getpid()
        )
        control.record(point, invocation_id, fault)
        if fault.action == Action.RAISE:
            raise InjectedFault(f"injected at {point}")
        if fault.action == Action.KILL:
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.action == Action.FREEZE:
            os.kill(os.getpid(), signal.SIGSTOP)  # returns once someone sends SIGCONT
            control.record(point, invocation_id, fault, "resumed")
        if fault.action == Action.HOLD:
            await asyncio.sleep(fault.seconds)

    return hook


def load_app(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"the app is given as module:attribute (e.g. orders_app:app), not {spec}")
    sys.path.insert(0, str(Path.cwd()))
    return getattr(importlib.import_module(module_name), attribute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s pid %(process)d %(name)s %(levelname)s: %(message)s",
    )
    logging.getLogger("dbpatterns").setLevel(logging.INFO)
    faults.install(fault_hook(Control(args.control)))
    app = load_app(args.app)

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    # restate-server sends every invocation as a stream of one long-lived connection; the
    # default cap of 1,000 requests per connection would cut it under calls in flight.
    config.keep_alive_max_requests = 1 << 62
    config.keep_alive_timeout = 60
    config.graceful_timeout = 1.0
    asyncio.run(serve_until_terminated(serve, app, config))


async def serve_until_terminated(serve: Any, app: Any, config: Any) -> None:
    """Serve until SIGTERM or SIGINT, then stop within hypercorn's graceful timeout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    main()
