"""baseline: a handler that does nothing, to price the rest.

No database, no durable step: its throughput and latency are what Restate, the SDK and the
HTTP/2 stream cost by themselves. ``dbpatterns bench`` divides every pattern by it.
"""

from __future__ import annotations

import restate

baseline = restate.Service("baseline")


@baseline.handler(name="noop")
async def noop(ctx: restate.Context) -> None:
    """Returns at once; the body, if any, is ignored."""
