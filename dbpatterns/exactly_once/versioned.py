"""A versioned update: exactly once for writes that go through one Restate virtual object key.

Guarantee: a success answer means this call's write is in the row, once, whatever crashes,
retries or zombie attempts happened. A write that lost its row to another writer is never
counted as done: it fails with a 409 that says so.

How: two durable steps. ``read`` fetches the state with its version and Restate journals it;
every attempt of the call then works from the same state. ``write`` applies the change on the
condition that the version is still the one read (``... WHERE version = %(seen)s``), and marks
the row with the call's id (``written_by``, from ``calls.new_call_id``). If the write matches
no row, the row is read again: if its mark is this call's, an earlier (or zombie) attempt of
this call wrote it, and the step counts that as done; any other mark means another writer got
there first, and the call fails with a 409: nothing of it was written.

The object runs one exclusive handler per key at a time, so within a call nothing else should
write the row between its two steps. That stops holding in two cases, and the mark catches both:

* a writer outside the object (another service, psql) moves the version between the steps;
* an invocation ends while one of its attempts is frozen (a paused process, a node cut off):
  killed or cancelled through the admin API, or killed by ``on-max-attempts``. The key is
  released, the next call reads the same version, the frozen attempt wakes and its write lands,
  and the next call's write misses: it sees the other call's mark and fails, instead of
  answering 200 for an update that is not in the row.

What a failure answer means: this call's write was not in the row when the call ended. After a
cancellation or a kill, an attempt of the call frozen elsewhere may still land its write later,
as long as nobody writes the row first (it writes only on the version it read); the row's mark
then names the call. (A live attempt in flight when the cancellation arrives is waited for
before the answer: a clean-up step reads the mark once it has finished, and answers 200 if its
write landed.) Where the caller must know for certain, use ``idempotent_transaction``, whose
failure answers are final.

Failure windows:

* Crash after the read is journaled: the retry reuses the journaled state, writes once.
* Crash after the write committed, before Restate recorded the step: the retry's write matches
  no row (the version moved on), the mark is this call's: done, once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import restate
from pydantic import TypeAdapter

from dbpatterns.exactly_once import faults
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.calls import (
    Done,
    Recorded,
    Retry,
    call_lock,
    in_turn,
    log_ending,
    new_call_id,
    record,
    result_of,
    run_options,
)
from dbpatterns.exactly_once.errors import database_errors

log = logging.getLogger("dbpatterns.exactly_once.versioned")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

#: The fault points of ``versioned_update``, with what a crash at each one tests.
POINTS = {
    "after-read": "the state and version are journaled: the retry reuses them and writes once",
    "before-write": "in the write step, before the conditional write: the retry writes once",
    "after-commit": "the conditional write committed, not yet recorded: the retry's write "
    "matches no row, the row's mark is this call's: done, once",
}


class Marked(Protocol):
    """The state ``read`` returns: whatever the caller needs, with the row's version, and the
    mark of the call that last wrote it (``written_by``; None before the first write)."""

    @property
    def written_by(self) -> str | None: ...


S = TypeVar("S", bound=Marked)


class VersionMoved(restate.TerminalError):
    """The write matched no row, and the row's mark is another call's: not applied."""


async def versioned_update(
    ctx: restate.ObjectContext,
    pool: Pool,
    *,
    read: Callable[[Connection], Awaitable[S]],
    write: Callable[[Connection, S, str], Awaitable[S | None]],
    state_type: type[S],
    read_step: str = "read state, version",
    write_step: str = "write if version unchanged",
    retry: Retry | None = None,
) -> Done[S]:
    """Read the state durably, then apply ``write`` once, conditioned on the version read;
    return the state the write left and the call's id (the mark ``write`` sets).

    The contract (the module docstring says how each holds), while every write of the row goes
    through the object:

    * retries and zombie attempts: written once; every attempt answers the state it left;
    * a 409 saying the row moved: another writer got there first; nothing of this call was
      written;
    * another error answer, a cancellation or a kill: this call's write was not in the row when
      the call ended; an attempt frozen elsewhere may still land it later, on the version it
      read, and the row's mark then names this call.

    Call it from an exclusive handler of a virtual object whose key names the row. PostgreSQL
    13 or newer.

    * ``read(conn)`` returns the state, version and ``written_by`` included, as ``state_type``
      (a pydantic model or a dataclass: it is journaled with that type). It may raise
      ``restate.TerminalError`` (e.g. a 404 for a missing row): the error is journaled, every
      retry gets it.
    * ``write(conn, seen, mark)`` writes the new state ``WHERE version = <seen's version>``,
      bumping the version and setting ``written_by = mark``, and returns the state it left
      (``UPDATE ... RETURNING``), or None when no row matched. It runs on a pooled connection as
      psycopg lends it: on an autocommit pool each statement commits on its own, so a write of
      several statements opens ``conn.transaction()`` itself (a single UPDATE needs none).

    Database errors a retry can fix are retried (``retry`` bounds how often); the others end the
    call with a 4xx or 500 (``dbpatterns.exactly_once.errors``).
    """
    async with in_turn(ctx):  # see dbpatterns.exactly_once.calls
        call_id = new_call_id(ctx)
        adapter: TypeAdapter[S] = TypeAdapter(state_type)

        async def read_state() -> S:
            async with database_errors(read_step), pool.connection() as conn:
                return await read(conn)

        seen = await ctx.run_typed(read_step, read_state, run_options(state_type, retry))
        await faults.reach(ctx, "after-read")

        async def write_if_unchanged() -> S:
            async with call_lock(call_id):
                await faults.reach(ctx, "before-write")
                async with database_errors(write_step), pool.connection() as conn:
                    after = await write(conn, seen, call_id)
                # Committed but not yet recorded: a retry from here finds the version moved on and
                # this call's mark on the row.
                await faults.reach(ctx, "after-commit")
                if after is not None:
                    return after
                now = await _read_again(pool, read, write_step)
            if now.written_by == call_id:
                log.warning(
                    "%s: the version moved on, and the row's mark is this call's (%s): an earlier "
                    "attempt wrote it, counting it as done",
                    write_step,
                    call_id,
                )
                return now
            raise VersionMoved(
                f"{write_step}: the row moved on from the version this call read, and the last "
                f"write is not this call's ({call_id}) but {now.written_by or 'unmarked'}'s: this "
                "update was NOT applied. Another writer changed the row between the read and the "
                "write (one outside this object, or an attempt of a call that was killed or "
                "cancelled while frozen). Call again to apply it to the new state.",
                status_code=409,
            )

        async def landed() -> Recorded:
            """After a failure: this call's write, if it is in the row after all (else null)."""
            async with call_lock(call_id):  # a write of this call still running here ends first
                try:
                    now = await _read_again(pool, read, write_step)
                except restate.TerminalError:  # the row is gone (a 404): nothing of ours is in it
                    return Recorded()
            return record(adapter, now) if now.written_by == call_id else Recorded()

        try:
            after = await ctx.run_typed(
                write_step, write_if_unchanged, run_options(state_type, retry)
            )
        except restate.TerminalError as error:
            found = await ctx.run_typed(
                f"{write_step}: did it land", landed, restate.RunOptions(type_hint=Recorded)
            )
            if found.result is None:
                log_ending(log, write_step, call_id, error, "its write is not in the row")
                raise
            log_ending(log, write_step, call_id, error, "its write had landed: answering it")
            after = result_of(adapter, found, write_step)
        return Done(result=after, call_id=call_id)


async def _read_again(pool: Pool, read: Callable[[Connection], Awaitable[S]], step: str) -> S:
    async with database_errors(f"{step}: reading the row again"), pool.connection() as conn:
        return await read(conn)
