"""An idempotent transaction: exactly once through a token written in the same transaction.

Guarantee: the caller's work commits at most once per call, whatever crashes, retries or
zombie attempts happen, and whoever else writes the same rows; and the answer says which:

* a result: the work committed, once (every attempt answers with the result of the one that
  committed it, ``null`` included);
* a terminal error (the work's own, a database refusal, retries given up, the deadline passed,
  a cancellation): the work did not commit and no attempt of the call ever will;
* a kill through Restate (the caller hears "killed" from Restate, no code of the call runs any
  more): the work may still commit until the call's deadline, never after, never twice; the
  token's row says whether it did.

How: the call's token (``calls.new_call_id``: the same on every attempt) is inserted into the
token table in ONE transaction with the caller's work, and the work's result is stored in the
token's row. Token, work and result commit together or not at all. An attempt that finds the
token already there knows an earlier attempt committed: it runs no work and returns the
recorded result. This is the idea DBOS builds on: record that a step ran, with its output, in
the same transaction as its effect.

Windows, and how each is closed:

* Crash or zombie around the commit: the token's primary key makes a second attempt wait for
  the first and then find the row (it committed) or insert it (it rolled back): exactly one runs
  the work to commit. READ COMMITTED is enough, and the token is claimed first, so the work's
  locks are always taken after it. (``isolation=`` sets another level for the transaction.)
* An attempt that reaches its transaction after the token expired (a zombie, a retry that kept
  failing): the call's deadline, journaled when it starts, is checked by the last statement
  before COMMIT, which also bounds the session's idle time to what is left
  (``tokens.FENCE``): past it the transaction rolls back, and the token outlives it by a TTL.
  The rule: keep the TTL longer than an invocation may keep retrying before it commits (Restate's
  retry policy, and any time it may sit paused); a call past its deadline fails with a 504 and
  writes nothing.
* A terminal error or a cancellation while an attempt may be in its transaction (here, or frozen
  elsewhere): before the error is answered, a clean-up step marks the token ``failed``. It
  first waits for a step of this call still running in this process, and for an attempt holding
  the token's row (its transaction ends first); if it finds the work committed after all, the
  call answers with its result. Every later attempt finds ``failed`` and does nothing.
* A kill through Restate: see the guarantee; the expiry it kills with the invocation is made up
  for by the next expiry's sweep (``tokens``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import restate
from psycopg import sql
from pydantic import BaseModel, TypeAdapter

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
from dbpatterns.exactly_once.tokens import Found, IdempotencyTokens, Window

log = logging.getLogger("dbpatterns.exactly_once.idempotent")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

T = TypeVar("T")

#: The fault points of ``idempotent_transaction``, with what a crash at each one tests.
POINTS = {
    "before-claim": "in the durable step, before the transaction that claims the token: a "
    "zombie resumed here after its call's deadline is refused by the fence; before it, it "
    "finds the token and adds nothing",
    "before-commit": "token claimed, work done, fence passed, not yet committed: a crash rolls "
    "all of it back, the retry commits once",
    "after-commit": "committed, not yet recorded by Restate: the retry finds its token and "
    "returns the recorded result: exactly once",
    "after-step": "the step is journaled, the handler has not answered: the expiry is "
    "already scheduled, so the token expires; a kill through Restate takes the expiry with it, "
    "and the next call's expiry sweeps the token",
}

#: ``SET TRANSACTION`` for each level psycopg names (fixed text: nothing of a caller's).
ISOLATION_LEVELS = {
    psycopg.IsolationLevel.READ_UNCOMMITTED: "READ UNCOMMITTED",
    psycopg.IsolationLevel.READ_COMMITTED: "READ COMMITTED",
    psycopg.IsolationLevel.REPEATABLE_READ: "REPEATABLE READ",
    psycopg.IsolationLevel.SERIALIZABLE: "SERIALIZABLE",
}


class _Settled(BaseModel):
    """The clean-up step's journaled outcome: whether the work had committed after all."""

    committed: bool
    result: Any = None


async def idempotent_transaction(
    ctx: restate.Context | restate.ObjectContext,
    pool: Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    tokens: IdempotencyTokens,
    result_type: Any,
    step: str = "transaction with token",
    isolation: psycopg.IsolationLevel | None = None,
    retry: Retry | None = None,
) -> Done[T]:
    """Run ``work(conn)`` at most once, in one transaction with this call's token; return its
    result as committed and the call's id (its token).

    The contract (the module docstring says how each holds):

    * retries and zombie attempts: the work commits once; every attempt answers its result;
    * an error answer (the work's, the database's, ``retry`` given up, the deadline passed, a
      cancellation): the work did not commit and never will;
    * a kill: the work may still commit, once, until the call's deadline, never after; the
      token's row says whether it did;
    * the TTL (``tokens.ttl``) is the deadline: keep it longer than an invocation may keep
      retrying or sit paused before it commits; the token is kept a TTL longer.

    ``work`` runs inside the transaction (do not commit in it, nor set its isolation: pass
    ``isolation``). Its result, of ``result_type`` (a pydantic model, dataclass or JSON value;
    ``None`` and optional types too), is stored with the token and journaled. It may raise
    ``restate.TerminalError`` (a 404, a 409): the transaction rolls back and the error ends the
    call. Database errors a retry can fix are retried (``retry`` bounds how often); the others
    end the call with a 4xx or 500. Several calls in one handler each get their own token; at
    once (``asyncio.gather``), they take turns (``calls``). PostgreSQL 13 or newer.
    """
    async with in_turn(ctx):  # see dbpatterns.exactly_once.calls
        call_id = new_call_id(ctx)
        adapter: TypeAdapter[T] = TypeAdapter(result_type)

        async def open_window() -> Window:
            return tokens.window(datetime.now(UTC))

        window = await ctx.run_typed(
            f"{step}: deadline", open_window, restate.RunOptions(type_hint=Window)
        )
        # Scheduled before the token can exist: whatever ends this invocation after its commit
        # (short of a kill through Restate, see dbpatterns.exactly_once.tokens), the token expires.
        tokens.schedule_expiry(ctx, call_id)

        async def transaction() -> Recorded:
            async with call_lock(call_id):
                await faults.reach(ctx, "before-claim")
                async with database_errors(step), pool.connection() as conn, conn.transaction():
                    if isolation is not None:
                        level = sql.SQL(ISOLATION_LEVELS[isolation])
                        await conn.execute(
                            sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(level)
                        )
                    found: Found | None = None
                    if await tokens.claim(conn, call_id, window):
                        ran = record(adapter, await work(conn))
                        await tokens.record(conn, call_id, ran.result)
                        await tokens.fence(conn, window)
                        await faults.reach(ctx, "before-commit")
                    else:
                        found = await tokens.found(conn, call_id)
                await faults.reach(ctx, "after-commit")
            if found is None:
                return ran
            if not found.committed:
                raise restate.TerminalError(
                    f"{step}: call {call_id} has already ended without its work (it failed or was "
                    "cancelled); this late attempt does nothing",
                    status_code=409,
                )
            log.warning(
                "%s: token %s already recorded, an earlier attempt committed; returning its result",
                step,
                call_id,
            )
            return Recorded(result=found.result)

        async def settle() -> _Settled:
            """Mark the token failed, unless the work committed after all (then: its result)."""
            async with (
                call_lock(call_id),  # a step of this call still running here ends first
                database_errors(f"{step}: marking call {call_id} failed"),
                pool.connection() as conn,
                conn.transaction(),
            ):
                found = await tokens.fail(conn, call_id, window)
            if found is not None and found.committed:
                return _Settled(committed=True, result=found.result)
            return _Settled(committed=False)

        try:
            recorded = await ctx.run_typed(step, transaction, run_options(Recorded, retry))
        except restate.TerminalError as error:
            settled = await ctx.run_typed(
                f"{step}: mark failed", settle, restate.RunOptions(type_hint=_Settled)
            )
            if not settled.committed:
                log_ending(log, step, call_id, error, "nothing committed; marked failed")
                raise
            log_ending(log, step, call_id, error, "its work had committed: answering its result")
            recorded = Recorded(result=settled.result)
        await faults.reach(ctx, "after-step")
        return Done(result=result_of(adapter, recorded, step), call_id=call_id)
