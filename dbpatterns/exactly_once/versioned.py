"""A versioned update: exactly once for writes that go through one Restate virtual object key.

Guarantee: the caller's write is applied once per invocation, whatever crashes, retries or
zombie attempts happen, as long as every write to the row goes through handlers of this
object key.

How: two durable steps. ``read`` fetches the state with its version and Restate journals it;
every attempt of the invocation then works from the same state. ``write`` applies the change on
the condition that the version is still the one read (``... WHERE version = %(seen)s``) and
says whether a row matched. The object runs one exclusive handler per key at a time, so nothing
else writes the row between the two steps: if the write matches no row, the only writer that
can have moved the version is an earlier (or zombie) attempt of this same invocation, which
already applied it. The step counts that as done.

Failure windows:

* Crash after the read is journaled: the retry reuses the journaled state, writes once.
* Crash after the write committed, before Restate recorded the step: the retry's write matches
  no row (the version moved on) and counts as done.
* A writer outside the object (another service, psql) that moves the version between the two
  steps makes the write miss, and this update is counted as done though it was not applied: a
  lost update. The pattern is only as good as "every write goes through the object"; when that
  cannot be promised, use ``idempotent_transaction``, which does not depend on who else writes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import restate

from dbpatterns.exactly_once import faults
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.errors import database_errors

log = logging.getLogger("dbpatterns.exactly_once.versioned")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

S = TypeVar("S")

#: The fault points of ``versioned_update``, with what a crash at each one tests.
POINTS = {
    "after-read": "the state and version are journaled: the retry reuses them and writes once",
    "before-write": "in the write step, before the conditional write: the retry writes once",
    "after-commit": "the conditional write committed, not yet recorded: the retry's write "
    "matches no row (the version moved on) and counts as done",
}


@dataclass(frozen=True)
class Versioned(Generic[S]):
    """``seen``: the state the write was conditioned on, as journaled. ``written``: whether this
    attempt's write matched (false: an earlier attempt of the invocation had written it)."""

    seen: S
    written: bool


async def versioned_update(
    ctx: restate.ObjectContext,
    pool: Pool,
    *,
    read: Callable[[Connection], Awaitable[S]],
    write: Callable[[Connection, S], Awaitable[bool]],
    state_type: type[S],
    read_step: str = "read state, version",
    write_step: str = "write if version unchanged",
) -> Versioned[S]:
    """Read the state durably, then apply ``write`` once, conditioned on the version read.

    Call it from an exclusive handler of a virtual object whose key names the row.

    * ``read(conn)`` returns the state, version included, as ``state_type`` (a pydantic model
      or a dataclass: it is journaled with that type). It may raise ``restate.TerminalError``
      (e.g. a 404 for a missing row): the error is journaled, every retry gets it.
    * ``write(conn, seen)`` writes the new state ``WHERE version = <seen's version>``, bumping
      the version, and returns whether a row matched. It runs on a pooled connection as psycopg
      lends it: the block is one transaction, committed at its end, unless the pool is in
      autocommit mode, where each statement commits on its own. A write of several statements
      on an autocommit pool opens ``conn.transaction()`` itself (a single UPDATE needs none,
      and saves the BEGIN and COMMIT round trips).

    Database errors a retry can fix are retried; the others end the call with a 4xx
    (``dbpatterns.exactly_once.errors``).
    """

    async def read_state() -> S:
        async with database_errors(read_step), pool.connection() as conn:
            return await read(conn)

    seen = await ctx.run_typed(read_step, read_state, restate.RunOptions(type_hint=state_type))
    await faults.reach(ctx, "after-read")

    async def write_if_unchanged() -> bool:
        await faults.reach(ctx, "before-write")
        async with database_errors(write_step), pool.connection() as conn:
            written = await write(conn, seen)
        # Committed but not yet recorded: a retry from here finds the version moved on and
        # writes nothing.
        await faults.reach(ctx, "after-commit")
        if not written:
            log.warning(
                "%s: the version is no longer the one read; an earlier attempt of this "
                "invocation wrote it, counting it as done (invocation %s)",
                write_step,
                ctx.request().id,
            )
        return written

    written = await ctx.run_typed(
        write_step, write_if_unchanged, restate.RunOptions(type_hint=bool)
    )
    return Versioned(seen=seen, written=written)
