"""Fault points inside the library: named moments a test harness can act on, nothing otherwise.

Each pattern names the moments that matter (``after-commit``: the transaction committed, Restate
has not yet recorded the step). The library passes them through ``reach``; with no hook
installed that is one ``is None`` test and nothing else, and nothing in the environment can
switch a hook on. Only code that calls ``install`` (the lab's service, for its chaos suite: see
``dbpatterns.service.failpoints``) gets faults, so a user's service cannot get them by accident.

The hook receives the point's full name, ``<service>.<handler>.<point>`` (for example
``invoices.pay.after-commit``), and the invocation id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import restate

#: ``hook(name, invocation_id)``: may sleep, raise (a transient error), or stop the process.
Hook = Callable[[str, str], Awaitable[None]]

_hook: Hook | None = None


def install(hook: Hook | None) -> None:
    """Route every fault point of this process through ``hook``; ``None`` removes it."""
    global _hook
    _hook = hook


async def reach(ctx: restate.Context | restate.ObjectContext, point: str) -> None:
    """Pass the fault point ``point`` of the running handler."""
    hook = _hook
    if hook is not None:
        await hook(f"{handler_name(ctx)}.{point}", ctx.request().id)


def handler_name(ctx: object) -> str:
    """``<service>.<handler>`` of the handler ``ctx`` runs.

    The SDK (restate-sdk 1.3) has no public accessor for it; its context keeps the running
    ``Handler`` as ``ctx.handler``. Only reached when a hook is installed.
    """
    handler = getattr(ctx, "handler", None)
    tag = getattr(handler, "service_tag", None)
    if handler is None or tag is None:
        return "unknown.unknown"
    return f"{tag.name}.{handler.name}"
