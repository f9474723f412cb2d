"""A prepared transaction: exactly once through PostgreSQL's two-phase commit.

Guarantee: the caller's work commits exactly once per invocation, or not at all when the
invocation fails, is cancelled or is killed; no prepared transaction of a finished invocation
stays behind holding its locks (given the janitor, below); and the call answers with the result
the committed work produced.

How: two durable steps. The first runs the work in a transaction, stores its result in the
prepared-results table inside that same transaction, notes the transaction's id
(``pg_current_xact_id()``) and ends it with ``PREPARE TRANSACTION gid`` instead of COMMIT: the
change is on disk, survives crashes of the service and of Postgres, and nobody sees it yet.
Restate journals ``(gid, xid)``. The second runs ``COMMIT PREPARED gid`` and reads the result,
now committed, back. The gid is ``<prefix><invocation id>``: every attempt of an invocation uses
the same one, so a retry finds what its predecessor left, and the janitor can ask Restate about
the invocation behind a prepared transaction.

Failure windows, and how each is closed:

* Crash after PREPARE, before Restate journals the step: the retry finds a transaction prepared
  under its gid. Only an attempt of this invocation prepares under it, so it is what the retry
  would prepare: the retry ADOPTS it (its xid) and prepares nothing. The first step never rolls
  a prepared transaction back.
* A zombie attempt that wakes between a retry's PREPARE and its COMMIT adopts the retry's
  transaction too, and rolls back nothing: the commit goes through, once.
* A zombie that wakes after the commit: its result row collides with the committed one (the
  gid is the key), so it learns the work is committed, rolls its own transaction back and
  prepares nothing. (Should it prepare anyway, once the result row is swept: ``COMMIT
  PREPARED`` commits only the xid it journaled, and the janitor rolls back a prepared
  transaction whose invocation has completed.)
* Crash after COMMIT PREPARED, before Restate journals the step: the retry's COMMIT PREPARED
  fails with 42704 (no such gid). It then asks ``pg_xact_status(xid)``: ``committed`` means
  done; ``aborted`` means someone rolled it back, the work did not happen, and the call fails
  saying so. Nothing is assumed.
* A terminal error or a cancellation (Restate's 409) after the first step started: a third
  step rolls the prepared transaction back, after any step of this invocation still running in
  this process has finished (a cancelled step must not prepare behind the cleanup's back). If
  it finds the work committed, the call answers with the committed result.
* The invocation is killed (``restate invocations kill``): no handler code runs any more, so a
  janitor must roll back prepared transactions whose invocation Restate reports completed or
  does not know (``dbpatterns janitor``; ``invocation_of`` and ``rollback_prepared`` are what it
  needs).
* Pool hygiene: the statements run on a pooled connection in autocommit mode, so BEGIN ...
  PREPARE TRANSACTION leaves it idle, as psycopg believes; any error rolls the open
  transaction back before the connection goes back to the pool.

The prepared-results rows stay after the commit (they are what turns a late zombie away) and are
swept once older than a retention you choose (``sweep_prepared_results``).

Request/response deployments: nothing lives in the attempt between the steps, so an attempt
that ends after every step just replays and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import psycopg
import restate
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from pydantic import BaseModel, TypeAdapter

from dbpatterns.exactly_once import faults
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.errors import database_errors
from dbpatterns.exactly_once.schema import PREPARED_RESULTS

log = logging.getLogger("dbpatterns.exactly_once.prepared")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

T = TypeVar("T")

#: Every gid of this library starts so; the janitor only ever touches these.
GID_PREFIX = "dbpatterns-2pc:"
#: A Restate invocation id, e.g. ``inv_1avxCyFBKBEP3hkVfE1YHf3yr6iPwcQ8pd``.
INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]{16,64}")

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
    "COMMIT PREPARED fails with 42704, pg_xact_status says committed: done, once",
}


class Prepared(BaseModel):
    """The first step's journaled outcome. ``xid`` (64-bit) is the transaction prepared as
    ``gid``; None when the work was found already committed by an earlier attempt. ``result``
    is the work's result (JSON) when this attempt ran it; None when it adopted an earlier
    attempt's transaction, whose result the commit step reads back once committed."""

    gid: str
    xid: int | None
    result: Any = None


Cleanup = Literal["rolled back", "nothing prepared", "already rolled back", "committed"]


def gid_for(invocation_id: str, prefix: str = GID_PREFIX) -> str:
    """The prepared transaction's name for an invocation.

    PREPARE TRANSACTION and friends take the gid as a literal, not a bind parameter, so it is
    quoted with ``psycopg.sql.Literal``, and built only from an invocation id that matches a
    strict pattern: nothing a caller sends ever reaches it.
    """
    if not INVOCATION_ID.fullmatch(invocation_id):
        raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
    return prefix + invocation_id


def invocation_of(gid: str, prefix: str = GID_PREFIX) -> str | None:
    """The invocation id inside one of our gids; None for any other gid."""
    if not gid.startswith(prefix):
        return None
    rest = gid.removeprefix(prefix)
    return rest if INVOCATION_ID.fullmatch(rest) else None


def rollback_prepared(gid: str) -> sql.Composed:
    """``ROLLBACK PREPARED gid``, as the cleanup step and a janitor both run it. Postgres takes
    no bind parameter there, so the gid is quoted as a literal."""
    return sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid))


def sweep_prepared_results(table: str = PREPARED_RESULTS) -> sql.Composed:
    """DELETE the result rows older than the interval given as the one parameter."""
    return sql.SQL("DELETE FROM {} WHERE created_at < now() - %s").format(sql.Identifier(table))


def widen_xid(xid: int, near: int) -> int:
    """The 64-bit id (``xid8``, as ``pg_current_xact_id()`` gives it and ``pg_xact_status``
    takes it) of a transaction known by its 32-bit ``xid``, e.g. from ``pg_prepared_xacts``.

    ``near`` is a current 64-bit id: ``pg_snapshot_xmax`` of a current snapshot, which is one
    past the latest *completed* transaction, so a transaction still in progress (a prepared one)
    may be at or even after it. Postgres keeps every live transaction within 2^31 ids of the
    current one (wraparound protection), so the answer is the id with these low 32 bits that
    lies within 2^31 of ``near``: in its epoch (the high 32 bits), the one before or the one
    after.
    """
    if not 0 <= xid < 1 << 32:
        raise ValueError(f"not a 32-bit transaction id: {xid}")
    wide = (near & ~0xFFFF_FFFF) | xid
    if wide > near + (1 << 31):
        wide -= 1 << 32
    elif wide < near - (1 << 31):
        wide += 1 << 32
    if wide < 0:
        raise ValueError(f"transaction id {xid} cannot be near {near}")
    return wide


# --- the database side -------------------------------------------------------------------------

#: The 32-bit xid of what an earlier attempt prepared under the gid, and a current 64-bit one to
#: widen it with. No row: nothing is prepared.
PREPARED_UNDER_GID = """
    SELECT transaction::text::bigint, pg_snapshot_xmax(pg_current_snapshot())::text::bigint
    FROM pg_prepared_xacts WHERE gid = %s
"""
IS_OURS = "SELECT transaction = xid(%s::text::xid8) FROM pg_prepared_xacts WHERE gid = %s"
XACT_STATUS = "SELECT pg_xact_status(%s::text::xid8)"

#: One lock per gid in this process: a cleanup waits for a step of its invocation that Restate
#: has stopped waiting for (after a cancellation) but that is still running here.
_gid_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
_slots: weakref.WeakKeyDictionary[Pool, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _gid_lock(gid: str) -> asyncio.Lock:
    lock = _gid_locks.get(gid)
    if lock is None:
        lock = _gid_locks[gid] = asyncio.Lock()
    return lock


def _prepare_slots(pool: Pool) -> asyncio.Semaphore:
    """At most half the pool may run the first step at once.

    A prepared transaction keeps its locks until its commit, which needs a pooled connection of
    its own. Without a limit, first steps waiting for those locks fill the pool, the commits that
    would release the locks wait for a connection, and every call crawls from lock timeout to
    pool timeout (measured in the lab: 64 callers on 8 rows, 2 calls/s). Keeping half the pool
    for commits and cleanups means the lock holder can always finish.
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


async def _xact_status(pg: Connection, xid: int) -> object:
    """'committed', 'aborted' or 'in progress' (a prepared transaction still is); None if too
    old for Postgres to remember."""
    row = await _fetch(pg, XACT_STATUS, (xid,))
    return row[0] if row else None


class _Transaction:
    """One invocation's prepared transaction: its gid, its result table, its steps."""

    def __init__(self, ctx: restate.Context, pool: Pool, gid: str, results: str) -> None:
        self.ctx, self.pool, self.gid = ctx, pool, gid
        table = sql.Identifier(results)
        self.insert_result = sql.SQL(
            "INSERT INTO {} (gid, result) VALUES (%s, %s) ON CONFLICT (gid) DO NOTHING "
            "RETURNING pg_current_xact_id()::text"
        ).format(table)
        self.read_result = sql.SQL("SELECT result FROM {} WHERE gid = %s").format(table)

    async def prepare(self, work: Callable[[Connection], Awaitable[object]]) -> Prepared:
        """Run the work and PREPARE it as the gid; or adopt the transaction an earlier attempt
        prepared as the gid; or find the work committed. Never rolls back a prepared transaction.

        A crash before PREPARE leaves nothing (the open transaction dies with its session).
        """
        gid = self.gid
        async with (
            _gid_lock(gid),
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
            result = await work(pg)
            inserted = await _fetch(pg, self.insert_result, (gid, Jsonb(result)))
            if not inserted:
                # The result row of this gid is committed: an earlier attempt's work is in.
                await pg.execute("ROLLBACK", prepare=False)
                log.warning("%s: an earlier attempt committed; preparing nothing", gid)
                return Prepared(gid=gid, xid=None)
            await faults.reach(self.ctx, "before-prepare")
            await pg.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        await faults.reach(self.ctx, "after-prepare")
        return Prepared(gid=gid, xid=int(str(inserted[0])), result=result)

    async def commit(self, prepared: Prepared) -> object:
        """COMMIT PREPARED the journaled xid, then read the committed result. Idempotent: a
        retry after a commit Restate did not record asks Postgres whether the transaction
        committed instead of failing with 42704 forever. Commits only the transaction the
        first step journaled, never one a zombie attempt prepared later under the same gid."""
        async with (
            _gid_lock(self.gid),
            database_errors(f"committing {self.gid}"),
            _session(self.pool) as pg,
        ):
            await faults.reach(self.ctx, "before-commit")
            if prepared.xid is not None:
                await self._commit_ours(pg, prepared.xid)
            # Ours, as journaled; an adopted transaction's, as it committed it.
            row = (
                (prepared.result,)
                if prepared.result is not None
                else await _fetch(pg, self.read_result, (self.gid,))
            )
        if not row:
            raise RuntimeError(f"{self.gid} committed, but its result row is gone (swept?)")
        await faults.reach(self.ctx, "after-commit")
        return row[0]

    async def _commit_ours(self, pg: Connection, xid: int) -> None:
        gid = self.gid
        try:
            ours = await _fetch(pg, IS_OURS, (xid, gid))
            if ours and not ours[0]:
                # A zombie attempt's transaction under our gid: committing it would apply the
                # work twice. Roll it back, then decide by ours.
                await _rollback(pg, gid)
                log.warning("%s: rolled back a zombie's second prepare", gid)
                raise psycopg.errors.UndefinedObject("ours is no longer prepared")
            await pg.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
            log.info("%s committed (xid %d)", gid, xid)
        except psycopg.errors.UndefinedObject:
            status = await _xact_status(pg, xid)
            if status == "committed":
                log.warning("%s: 42704, but xid %d committed: done", gid, xid)
            elif status == "aborted":
                raise restate.TerminalError(
                    f"the prepared transaction {gid} (xid {xid}) was rolled back before it "
                    "could be committed (by a janitor or by hand): the work did NOT happen; "
                    "call again to do it",
                    status_code=500,
                ) from None
            else:  # 'in progress' without its gid, or forgotten: do not guess, retry
                raise RuntimeError(f"{gid} is gone but transaction {xid} is {status!r}") from None

    async def roll_back(self, xid: int | None) -> Cleanup:
        """ROLLBACK PREPARED, after any step of this invocation still running here has
        finished. Idempotent; reports what it found."""
        async with (
            _gid_lock(self.gid),
            database_errors(f"rolling back {self.gid}"),
            _session(self.pool) as pg,
        ):
            if await _rollback(pg, self.gid):
                return "rolled back"
            if xid is None:
                return "nothing prepared"
            status = await _xact_status(pg, xid)
        if status == "committed":
            return "committed"
        if status == "aborted":
            return "already rolled back"
        raise RuntimeError(f"{self.gid} is gone but transaction {xid} is {status!r}")


async def prepared_transaction(
    ctx: restate.Context,
    pool: Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    result_type: type[T],
    results_table: str = PREPARED_RESULTS,
    gid_prefix: str = GID_PREFIX,
    prepare_step: str = "PREPARE TRANSACTION",
    commit_step: str = "COMMIT PREPARED",
) -> T:
    """Run ``work(conn)`` in a transaction, PREPARE it in one durable step, COMMIT PREPARED in
    the next; return its result.

    ``work`` runs inside the transaction (do not commit in it); its result, of ``result_type``
    (a pydantic model, dataclass or JSON value), is stored with the transaction and journaled
    by the commit step. It may raise ``restate.TerminalError`` (a 404, a 409): nothing is
    prepared, and the error ends the call. Database errors a retry can fix are retried; the
    others end the call with a 4xx. Postgres must allow prepared transactions
    (``max_prepared_transactions`` > 0).
    """
    tx = _Transaction(ctx, pool, gid_for(ctx.request().id, gid_prefix), results_table)
    adapter: TypeAdapter[T] = TypeAdapter(result_type)

    async def prepare() -> Prepared:
        async def run_work(conn: Connection) -> object:
            return adapter.dump_python(await work(conn), mode="json")

        return await tx.prepare(run_work)

    async def commit(prepared: Prepared) -> T:
        return adapter.validate_python(await tx.commit(prepared))

    async def roll_back(xid: int | None) -> Cleanup:
        return await tx.roll_back(xid)

    committed = restate.RunOptions(type_hint=result_type)
    prepared: Prepared | None = None
    try:
        prepared = await ctx.run_typed(
            prepare_step, prepare, restate.RunOptions(type_hint=Prepared)
        )
        return await ctx.run_typed(commit_step, commit, committed, prepared)
    except restate.TerminalError as exc:
        # Cancelled (409), refused by the database or the work, rolled back by someone else:
        # whatever ends this invocation, no prepared transaction of it stays behind.
        xid = prepared.xid if prepared else None
        cleanup = await ctx.run_typed(
            "ROLLBACK PREPARED", roll_back, restate.RunOptions(type_hint=str), xid
        )
        log.log(
            logging.INFO if cleanup == "nothing prepared" else logging.WARNING,
            "%s failed (%s): %s (invocation %s)",
            tx.gid,
            exc.message,
            cleanup,
            ctx.request().id,
        )
        if cleanup == "committed" and prepared is not None:
            # A cancellation raced a COMMIT PREPARED that went through: the work is in.
            return await ctx.run_typed(commit_step + " (after cancel)", commit, committed, prepared)
        raise
