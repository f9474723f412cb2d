"""A prepared transaction: exactly once through PostgreSQL's two-phase commit.

Guarantee: the caller's work commits at most once per call, whatever crashes, retries or
zombie attempts happen; no prepared transaction of a finished call stays behind holding its
locks (given the janitor, below); and the answer says which:

* a result: the work committed, once, and this is what it produced;
* a terminal error (the work's own, a database refusal, retries given up, a cancellation): the
  work did not commit and never will: the clean-up rolled it back, and only this call's commit
  step, which never runs after it, commits;
* a kill through Restate (the caller hears "killed", no code of the call runs any more): the
  work commits only if an attempt was already in its commit step (COMMIT PREPARED on its way);
  otherwise the janitor's next pass rolls the prepared transaction back. The result row says
  whether it committed.

How: two durable steps. The first runs the work in a transaction, stores its result in the
prepared-results table inside that same transaction, notes the transaction's id
(``pg_current_xact_id()``) and ends it with ``PREPARE TRANSACTION gid`` instead of COMMIT: the
change is on disk, survives crashes of the service and of Postgres, and nobody sees it yet.
Restate journals ``(gid, xid)``. The second runs ``COMMIT PREPARED gid`` and answers with the
result. The gid is ``<prefix><call id>`` (``gids``): every attempt of a call uses the same one,
so a retry finds what its predecessor left; two calls in one invocation have two; and the
janitor can ask Restate about the invocation behind each.

Failure windows, and how each is closed:

* Crash after PREPARE, before Restate journals the step: the retry finds a transaction prepared
  under its gid. Only an attempt of this call prepares under it, so it is what the retry would
  prepare: the retry ADOPTS it (its xid) and prepares nothing. The first step never rolls a
  prepared transaction back.
* A zombie attempt that wakes between a retry's PREPARE and its COMMIT adopts the retry's
  transaction too, and rolls back nothing: the commit goes through, once.
* A zombie that wakes after the commit: its result row collides with the committed one (the
  gid is the key), so it learns the work is committed, rolls its own transaction back and
  prepares nothing. (Should it prepare anyway, once the result row is swept: ``COMMIT
  PREPARED`` commits only the xid it journaled, and the janitor rolls back a prepared
  transaction whose invocation has completed.)
* Crash after COMMIT PREPARED, before Restate journals the step: the retry's COMMIT PREPARED
  fails with 42704 (no such gid). The result row, which commits exactly with the prepared
  transaction, is the witness: there, the work committed; gone, someone rolled it back (a
  janitor, by hand) and the call fails saying so. Nothing is assumed.
* A terminal error or a cancellation (Restate's 409) after the first step started: a clean-up
  step rolls the prepared transaction back, after any step of this call still running in this
  process has finished (a cancelled step must not prepare behind the clean-up's back). If it
  finds the work committed, the call answers with the committed result. A zombie elsewhere that
  prepares after the clean-up is never committed (only the commit step commits), and the
  janitor rolls it back.
* The invocation is killed (``restate invocations kill``): no handler code runs any more, so a
  janitor must roll back prepared transactions whose invocation Restate reports completed or
  does not know (``dbpatterns.exactly_once.janitor``).
* Pool hygiene: the statements run on a pooled connection in autocommit mode, so BEGIN ...
  PREPARE TRANSACTION leaves it idle, as psycopg believes; any error rolls the open
  transaction back before the connection goes back to the pool.

The prepared-results rows stay after the commit (they are what turns a late zombie away, and
what a retry of the commit step reads) and are swept once older than a retention you choose
(``gids.sweep_prepared_results``): keep it longer than a call may take, as a token's TTL.

Request/response deployments: nothing lives in the attempt between the steps, so an attempt
that ends after every step just replays and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import restate
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from pydantic import BaseModel, TypeAdapter

from dbpatterns.exactly_once import faults
from dbpatterns.exactly_once._tables import PREPARED_RESULTS
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
from dbpatterns.exactly_once.gids import GID_PREFIX, gid_for, rollback_prepared, widen_xid

log = logging.getLogger("dbpatterns.exactly_once.prepared")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

T = TypeVar("T")

#: The fault points of ``prepared_transaction``, with what a crash at each one tests.
POINTS = {
    "before-leftover-check": "first step, before it looks for a transaction an earlier attempt "
    "prepared: a zombie resumed here after the retry's PREPARE adopts it and rolls back "
    "nothing; the call still succeeds, once",
    "before-prepare": "work done, transaction open, before PREPARE TRANSACTION: the open "
    "transaction is rolled back, the connection goes back clean, the retry commits once",
    "after-prepare": "after PREPARE TRANSACTION, before Restate records the step: the retry "
    "adopts the prepared transaction, prepares nothing: once",
    "before-commit": "first step recorded, before COMMIT PREPARED: the prepared transaction "
    "waits, holding its locks; the retry commits it",
    "after-commit": "after COMMIT PREPARED, before Restate records the step: the retry's "
    "COMMIT PREPARED fails with 42704, the result row is there: done, once",
}


class Prepared(BaseModel):
    """The first step's journaled outcome. ``xid`` (64-bit) is the transaction prepared as
    ``gid``; None when the work was found already committed by an earlier attempt.
    ``result`` is the work's result (JSON) when this attempt ran it (``ran``); otherwise the
    commit step reads it from the result row."""

    gid: str
    xid: int | None
    ran: bool = False
    result: Any = None


class Settled(BaseModel):
    """The clean-up step's journaled outcome: ``found`` says what it found (``rolled back``,
    ``nothing prepared``, ``committed``); ``result``, the committed result when it was."""

    found: str
    result: Any = None

    @property
    def committed(self) -> bool:
        return self.found == "committed"


# --- the database side -------------------------------------------------------------------------

#: The 32-bit xid of what an earlier attempt prepared under the gid, and a current 64-bit one to
#: widen it with. No row: nothing is prepared.
PREPARED_UNDER_GID = """
    SELECT transaction::text::bigint, pg_snapshot_xmax(pg_current_snapshot())::text::bigint
    FROM pg_prepared_xacts WHERE gid = %s
"""
IS_OURS = "SELECT transaction = xid(%s::text::xid8) FROM pg_prepared_xacts WHERE gid = %s"
XACT_STATUS = "SELECT pg_xact_status(%s::text::xid8)"

_slots: weakref.WeakKeyDictionary[Pool, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _prepare_slots(pool: Pool) -> asyncio.Semaphore:
    """At most half the pool may run the first step at once.

    A prepared transaction keeps its locks until its commit, which needs a pooled connection of
    its own. Without a limit, first steps waiting for those locks fill the pool, the commits that
    would release the locks wait for a connection, and every call crawls from lock timeout to
    pool timeout (measured in the lab: 64 callers on 8 rows, 2 calls/s). Keeping half the pool
    for commits and clean-ups means the lock holder can always finish.
    """
    slots = _slots.get(pool)
    if slots is None:
        slots = _slots[pool] = asyncio.Semaphore(max(1, pool.max_size // 2))
    return slots


@asynccontextmanager
async def _session(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection in autocommit mode that goes back to the pool idle, whatever happened.

    In autocommit mode, explicit BEGIN ... PREPARE TRANSACTION leaves the session idle, as
    psycopg believes it is. On the way out, a transaction still open (an error before PREPARE)
    is rolled back; a connection that cannot be rolled back is closed, and the pool replaces it.
    """
    async with pool.connection() as pg:
        restore = not pg.autocommit
        if restore:
            await pg.set_autocommit(True)
        try:
            yield pg
        finally:
            status = pg.info.transaction_status
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                try:
                    await pg.execute("ROLLBACK", prepare=False)
                except psycopg.Error:
                    await pg.close()
            if restore and not pg.closed:
                await pg.set_autocommit(False)


async def _fetch(
    pg: Connection, query: str | sql.Composed, params: tuple[object, ...]
) -> tuple[object, ...]:
    row = await (await pg.execute(query, params)).fetchone()
    return tuple(row) if row is not None else ()


async def _rollback(pg: Connection, gid: str) -> bool:
    """ROLLBACK PREPARED gid; False if there was no such prepared transaction (42704)."""
    try:
        await pg.execute(rollback_prepared(gid))
    except psycopg.errors.UndefinedObject:
        return False
    return True


class _Transaction:
    """One call's prepared transaction: its gid, its result table, its steps."""

    def __init__(
        self,
        ctx: restate.Context | restate.ObjectContext,
        pool: Pool,
        call_id: str,
        gid: str,
        results: str,
    ) -> None:
        self.ctx, self.pool, self.call_id, self.gid = ctx, pool, call_id, gid
        table = sql.Identifier(results)
        self.insert_result = sql.SQL(
            "INSERT INTO {} (gid, result) VALUES (%s, %s) ON CONFLICT (gid) DO NOTHING "
            "RETURNING pg_current_xact_id()::text"
        ).format(table)
        self.read_result = sql.SQL("SELECT result FROM {} WHERE gid = %s").format(table)

    async def prepare(self, work: Callable[[Connection], Awaitable[Recorded]]) -> Prepared:
        """Run the work and PREPARE it as the gid; or adopt the transaction an earlier attempt
        prepared as the gid; or find the work committed. Never rolls back a prepared transaction.

        A crash before PREPARE leaves nothing (the open transaction dies with its session).
        """
        gid = self.gid
        async with (
            call_lock(self.call_id),
            _prepare_slots(self.pool),
            database_errors(f"preparing {gid}"),
            _session(self.pool) as pg,
        ):
            await faults.reach(self.ctx, "before-leftover-check")
            row = await _fetch(pg, PREPARED_UNDER_GID, (gid,))
            if row:
                xid = widen_xid(int(str(row[0])), int(str(row[1])))
                log.warning("adopted %s (xid %d), prepared by an earlier attempt", gid, xid)
                return Prepared(gid=gid, xid=xid)
            # Never server-side prepared: it saves nothing on a BEGIN.
            await pg.execute("BEGIN", prepare=False)
            done = await work(pg)
            inserted = await _fetch(pg, self.insert_result, (gid, Jsonb(done.result)))
            if not inserted:
                # The result row of this gid is committed: an earlier attempt's work is in.
                await pg.execute("ROLLBACK", prepare=False)
                log.warning("%s: an earlier attempt committed; preparing nothing", gid)
                return Prepared(gid=gid, xid=None)
            await faults.reach(self.ctx, "before-prepare")
            await pg.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        await faults.reach(self.ctx, "after-prepare")
        return Prepared(gid=gid, xid=int(str(inserted[0])), ran=True, result=done.result)

    async def commit(self, prepared: Prepared) -> Recorded:
        """COMMIT PREPARED the journaled xid, and answer with the committed result. Idempotent:
        a retry after a commit Restate did not record finds the result row, which commits
        exactly with the transaction, instead of failing with 42704 forever. Commits only the
        transaction the first step journaled, never one a zombie attempt prepared later under
        the same gid."""
        gid = self.gid
        async with (
            call_lock(self.call_id),
            database_errors(f"committing {gid}"),
            _session(self.pool) as pg,
        ):
            await faults.reach(self.ctx, "before-commit")
            committed_here = prepared.xid is not None and await self._commit_ours(pg, prepared.xid)
            if committed_here and prepared.ran:
                witness: tuple[object, ...] = (prepared.result,)
            else:  # adopted, found committed, or gone: the result row says what happened
                witness = await _fetch(pg, self.read_result, (gid,))
                if not witness:
                    raise await self._not_committed(pg, prepared.xid)
        await faults.reach(self.ctx, "after-commit")
        return Recorded(result=witness[0])

    async def _commit_ours(self, pg: Connection, xid: int) -> bool:
        """COMMIT PREPARED our transaction; False if it is no longer prepared (committed by an
        earlier attempt, or rolled back by someone else)."""
        gid = self.gid
        ours = await _fetch(pg, IS_OURS, (xid, gid))
        if not ours:
            return False
        if not ours[0]:
            # A zombie attempt's transaction under our gid: committing it would apply the work
            # twice. Roll it back; ours is then gone, and the result row tells what became of it.
            await _rollback(pg, gid)
            log.warning("%s: rolled back a zombie's second prepare", gid)
            return False
        try:
            await pg.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
        except psycopg.errors.UndefinedObject:  # finished meanwhile, by another attempt
            return False
        log.info("%s committed (xid %d)", gid, xid)
        return True

    async def _not_committed(self, pg: Connection, xid: int | None) -> restate.TerminalError:
        """The error of a call whose transaction is gone without its result row."""
        status: object = None
        if xid is not None:
            try:
                status = (await _fetch(pg, XACT_STATUS, (xid,)) or (None,))[0]
            except psycopg.errors.InvalidParameterValue:  # 22023: an xid Postgres never issued
                status = "unknown to this database"
        if status == "committed":
            return restate.TerminalError(
                f"{self.gid} committed, but its result row is gone: the results table was swept "
                "sooner than this call took; keep its retention longer than any call may take",
                status_code=500,
            )
        return restate.TerminalError(
            f"the prepared transaction {self.gid} was rolled back before it could be committed "
            f"(by a janitor or by hand; transaction {xid}: {status or 'forgotten'}): the work "
            "did NOT happen; call again to do it",
            status_code=500,
        )

    async def roll_back(self) -> Settled:
        """ROLLBACK PREPARED, after any step of this call still running here has finished.
        Idempotent; reports what it found, and the result if the work had committed."""
        async with (
            call_lock(self.call_id),
            database_errors(f"rolling back {self.gid}"),
            _session(self.pool) as pg,
        ):
            if await _rollback(pg, self.gid):
                return Settled(found="rolled back")
            witness = await _fetch(pg, self.read_result, (self.gid,))
        if witness:
            return Settled(found="committed", result=witness[0])
        return Settled(found="nothing prepared")


async def prepared_transaction(
    ctx: restate.Context | restate.ObjectContext,
    pool: Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    result_type: Any,
    results_table: str = PREPARED_RESULTS,
    gid_prefix: str = GID_PREFIX,
    prepare_step: str = "PREPARE TRANSACTION",
    commit_step: str = "COMMIT PREPARED",
    retry: Retry | None = None,
) -> Done[T]:
    """Run ``work(conn)`` in a transaction, PREPARE it in one durable step, COMMIT PREPARED in
    the next; return its result as committed and the call's id (the gid is ``gid_prefix`` and
    the id).

    The contract (the module docstring says how each holds):

    * retries and zombie attempts: the work commits once; every attempt answers its result;
    * an error answer (the work's, the database's, ``retry`` given up, a cancellation): rolled
      back, the work did not commit and never will;
    * a kill: the work commits only if an attempt was already sending COMMIT PREPARED; else
      the janitor (``janitor``) rolls it back at its next pass; the result row says which;
    * keep the results table's retention longer than any call may take.

    ``work`` runs inside the transaction (do not commit in it); its result, of ``result_type``
    (a pydantic model, dataclass or JSON value; ``None`` and optional types too), is stored with
    the transaction and journaled by the commit step. It may raise ``restate.TerminalError`` (a
    404, a 409): nothing is prepared, and the error ends the call. Database errors a retry can
    fix are retried (``retry`` bounds how often); the others end the call with a 4xx or 500.
    Postgres must allow prepared transactions (``max_prepared_transactions`` > 0); PostgreSQL
    13 or newer. Several calls in one handler each get their own gid; at once
    (``asyncio.gather``), they take turns (``calls``).
    """
    async with in_turn(ctx):  # see dbpatterns.exactly_once.calls
        call_id = new_call_id(ctx)
        tx = _Transaction(ctx, pool, call_id, gid_for(call_id, gid_prefix), results_table)
        adapter: TypeAdapter[T] = TypeAdapter(result_type)

        async def run_work(conn: Connection) -> Recorded:
            return record(adapter, await work(conn))

        async def prepare() -> Prepared:
            return await tx.prepare(run_work)

        try:
            prepared = await ctx.run_typed(prepare_step, prepare, run_options(Prepared, retry))
            committed = await ctx.run_typed(
                commit_step, tx.commit, run_options(Recorded, retry), prepared
            )
        except restate.TerminalError as exc:
            # Cancelled (409), refused by the database or the work, rolled back by someone else:
            # whatever ends this call, no prepared transaction of it stays behind.
            settled = await ctx.run_typed(
                "ROLLBACK PREPARED", tx.roll_back, restate.RunOptions(type_hint=Settled)
            )
            log_ending(log, commit_step, call_id, exc, settled.found)
            if not settled.committed:
                raise
            # A cancellation raced a COMMIT PREPARED that went through: the work is in.
            committed = Recorded(result=settled.result)
        return Done(result=result_of(adapter, committed, commit_step), call_id=call_id)
