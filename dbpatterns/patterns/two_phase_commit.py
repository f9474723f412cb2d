"""twoPhaseCommit: exactly-once credit updates through PostgreSQL prepared transactions.

Guarantee: ``update`` adds the credits exactly once per invocation, or not at all when the
invocation fails, is cancelled or is killed; and no prepared transaction of a finished
invocation stays behind holding its row locks.

How: two durable steps. ``prepare`` adds the credits in a transaction, notes the transaction's
id (``pg_current_xact_id()``) and ends it with ``PREPARE TRANSACTION gid`` instead of COMMIT: the
change is now on disk, survives crashes of the service and of Postgres, but nobody sees it yet.
Restate journals ``(gid, xid, new balance)``. ``commit`` runs ``COMMIT PREPARED gid``. The gid is
``dbpatterns-2pc:<invocation id>``: every attempt of an invocation uses the same one, so a retry
finds what its predecessor left, and the janitor can ask Restate about the invocation behind it.

The failure windows, and how each is closed:

* Crash after PREPARE, before Restate journals the step: the retry of ``prepare`` finds a
  transaction already prepared under its gid. Only an earlier attempt of this invocation, with
  the same journaled input, can have prepared it, so it is exactly what the retry would
  prepare: the retry ADOPTS it (its xid, and the balance it leaves) and touches nothing. The
  prepare step never rolls back a prepared transaction.
* A zombie attempt (paused inside ``prepare``) that wakes after a retry prepared, before the
  retry's COMMIT PREPARED: it finds the retry's transaction and adopts it too; it rolls back
  nothing, so the retry's commit goes through and the call succeeds, once.
* A zombie that wakes after the commit finds nothing under the gid and prepares the credits
  again. That second transaction is never committed: ``commit`` commits only the xid it
  journaled (a mismatch is rolled back, and the outcome decided by ``pg_xact_status`` of the
  journaled xid), and ``dbpatterns.janitor`` rolls back a prepared transaction whose
  invocation has completed.
* Crash after COMMIT PREPARED, before Restate journals the step: the retry's COMMIT PREPARED
  fails with 42704 (no such gid). Instead of failing forever (as the TypeScript example does),
  ``commit`` asks ``pg_xact_status(xid)``: ``committed`` means done; ``aborted`` means someone
  rolled the prepared transaction back, the credits were not added, and the invocation fails
  saying so. Nothing is assumed.
* A terminal error or a cancellation (Restate's 409) anywhere after ``prepare`` started: a
  third durable step rolls the prepared transaction back before the error is re-raised. It first
  waits for any step of this invocation still running in this process, so a cancelled step
  cannot prepare behind the cleanup's back. If it finds the commit already done, the invocation
  answers with the committed result: that is what happened.
* The invocation is killed (``restate invocations kill``), or a zombie attempt prepares after
  the cleanup: no handler code runs any more, so ``dbpatterns.janitor`` rolls back prepared
  transactions whose invocation Restate reports completed or does not know.
* Pool hygiene: the statements run on a pooled connection in autocommit mode, so
  BEGIN ... PREPARE TRANSACTION leaves it idle, as psycopg and its pool believe it is; any
  error rolls the open transaction back before the connection goes back to the pool (the
  TypeScript example leaks one connection per call).

Request/response deployments: supported. Nothing lives in the attempt between the steps (the
prepared transaction is in Postgres, its gid and xid in the journal), so an attempt that ends
after every step, as on a request/response deployment or with an inactivity timeout of 0, just
replays and carries on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import psycopg
import restate
from psycopg import sql
from psycopg.pq import TransactionStatus
from pydantic import BaseModel

from dbpatterns import boundary, db, failpoints
from dbpatterns.config import get_settings
from dbpatterns.patterns.models import Response, UpdateCredits
from dbpatterns.patterns.simple import user_not_found

log = logging.getLogger("dbpatterns.two_phase_commit")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

two_phase_commit = restate.Service("twoPhaseCommit")

#: Every gid of this pattern starts so; the janitor only ever touches these.
GID_PREFIX = "dbpatterns-2pc:"
#: A Restate invocation id, e.g. ``inv_1avxCyFBKBEP3hkVfE1YHf3yr6iPwcQ8pd``.
INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]{16,64}")

BEFORE_PREPARE = failpoints.declare(
    "twoPhaseCommit.update.before-prepare",
    "twoPhaseCommit.update, credits added, transaction open, before PREPARE TRANSACTION",
    "the open transaction is rolled back, the connection goes back clean, the retry adds once",
)
BEFORE_LEFTOVER_CHECK = failpoints.declare(
    "twoPhaseCommit.update.before-leftover-check",
    "twoPhaseCommit.update, prepare step, before it looks for a transaction an earlier attempt "
    "prepared",
    "a zombie resumed here after the retry journaled its PREPARE adopts it and rolls back "
    "nothing: the call still succeeds, once",
)
AFTER_PREPARE = failpoints.declare(
    "twoPhaseCommit.update.after-prepare",
    "twoPhaseCommit.update, after PREPARE TRANSACTION, before Restate records the step",
    "the retry adopts the transaction prepared under its gid, prepares nothing: adds once",
)
BEFORE_COMMIT = failpoints.declare(
    "twoPhaseCommit.update.before-commit",
    "twoPhaseCommit.update, prepare recorded, before COMMIT PREPARED",
    "the prepared transaction waits, holding its row lock; the retry commits it",
)
AFTER_COMMIT = failpoints.declare(
    "twoPhaseCommit.update.after-commit",
    "twoPhaseCommit.update, after COMMIT PREPARED, before Restate records the step",
    "the retry's COMMIT PREPARED fails with 42704; pg_xact_status says committed: done, once",
)


class Prepared(BaseModel):
    """The journaled result of ``prepare``: what ``commit`` (or a cleanup) needs."""

    gid: str
    xid: int
    credits: int


class Committed(Response):
    """``{"committed": true, "credits": <balance after>, "transaction": <gid>}``"""

    committed: bool
    credits: int
    transaction: str


Cleanup = Literal["rolled back", "nothing prepared", "already rolled back", "committed"]


def gid_for(invocation_id: str) -> str:
    """The prepared transaction's name for an invocation.

    PREPARE TRANSACTION and friends take the gid as a literal, not a bind parameter, so it is
    quoted with ``psycopg.sql.Literal``, and built only from an invocation id that matches a
    strict pattern: nothing a caller sends ever reaches it.
    """
    if not INVOCATION_ID.fullmatch(invocation_id):
        raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
    return GID_PREFIX + invocation_id


def invocation_of(gid: str) -> str | None:
    """The invocation id inside one of our gids; None for any other gid."""
    if not gid.startswith(GID_PREFIX):
        return None
    rest = gid.removeprefix(GID_PREFIX)
    return rest if INVOCATION_ID.fullmatch(rest) else None


# --- database side -----------------------------------------------------------------------------

#: What an earlier attempt left under the gid, in one round trip: its 32-bit xid, a current
#: 64-bit one (to widen it to the 64-bit id the journal keeps), and the user's committed balance.
#: No row: nothing is prepared. ``credits`` is NULL only if the user does not exist.
PREPARED_UNDER_GID = """
    SELECT p.transaction::text::bigint,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
           u.credits
    FROM pg_prepared_xacts p LEFT JOIN users u ON u.userid = %(user_id)s
    WHERE p.gid = %(gid)s
"""
ADD_CREDITS_NOTING_XID = """
    UPDATE users SET credits = credits + %(add)s, version = version + 1
    WHERE userid = %(user_id)s
    RETURNING credits, pg_current_xact_id()::text
"""

#: One lock per gid in this process: a cleanup waits for a step of its invocation that Restate
#: has stopped waiting for (after a cancellation) but that is still running here.
_gid_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _gid_lock(gid: str) -> asyncio.Lock:
    lock = _gid_locks.get(gid)
    if lock is None:
        lock = _gid_locks[gid] = asyncio.Lock()
    return lock


@functools.cache
def _prepare_slots() -> asyncio.Semaphore:
    """At most half the pool may run ``prepare`` at once.

    A prepared transaction keeps its row locks until ``commit``, which needs a pooled
    connection of its own. Without a limit, prepares waiting for those locks fill the pool,
    the commits that would release the locks wait for a connection, and every call crawls from
    lock timeout to pool timeout (measured: 64 callers on 8 rows, 2 calls/s). Keeping half the
    pool for commits and cleanups means the lock holder can always finish.
    """
    return asyncio.Semaphore(max(1, get_settings().pool_size // 2))


@asynccontextmanager
async def _session() -> AsyncIterator[db.Connection]:
    """A pooled connection (autocommit) that goes back to the pool idle, whatever happened.

    In autocommit mode, explicit BEGIN ... PREPARE TRANSACTION leaves the session idle, as
    psycopg believes it is. On the way out, a transaction still open (an error before PREPARE)
    is rolled back; a connection that cannot be rolled back is closed, and the pool replaces it.
    """
    async with db.connection() as pg:
        try:
            yield pg
        finally:
            status = pg.info.transaction_status
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                try:
                    await pg.execute("ROLLBACK", prepare=False)
                except psycopg.Error:
                    await pg.close()


def rollback_prepared(gid: str) -> sql.Composed:
    """``ROLLBACK PREPARED gid``, the one statement the handler's cleanup and the janitor both
    run. Postgres takes no bind parameter there, so the gid is quoted as a literal."""
    return sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid))


async def _rollback_prepared(pg: psycopg.AsyncConnection[Any], gid: str) -> bool:
    """ROLLBACK PREPARED gid; False if there was no such prepared transaction (42704)."""
    try:
        await pg.execute(rollback_prepared(gid))
    except psycopg.errors.UndefinedObject:
        return False
    return True


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


async def _adoptable(
    pg: psycopg.AsyncConnection[Any], gid: str, user_id: str, add: int
) -> Prepared | None:
    """The transaction an earlier attempt of this invocation prepared under ``gid``, as that
    attempt would have journaled it; None if nothing is prepared under ``gid``.

    Only an attempt of the same invocation, with the same journaled input, prepares under this
    gid, so what it prepared is exactly what this attempt would. Its balance: while it holds
    the user's row lock no other transaction can commit a change to the row, so the committed
    balance visible now is the one its UPDATE started from.
    """
    row = await db.fetch_one(pg, PREPARED_UNDER_GID, {"gid": gid, "user_id": user_id})
    if row is None:
        return None
    xid32, near, visible = row
    if visible is None:
        raise RuntimeError(f"{gid} is prepared, but its user {user_id!r} is gone")
    return Prepared(gid=gid, xid=widen_xid(int(xid32), int(near)), credits=visible + add)


async def _xact_status(pg: psycopg.AsyncConnection[Any], xid: int) -> str | None:
    """'committed', 'aborted' or 'in progress' (a prepared transaction still is); None if too
    old for Postgres to remember."""
    cur = await pg.execute("SELECT pg_xact_status(%s::text::xid8)", (xid,))
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _prepared_is_ours(pg: psycopg.AsyncConnection[Any], gid: str, xid: int) -> bool | None:
    """Is the transaction prepared as ``gid`` the one this invocation journaled (``xid``)?
    None if nothing is prepared under ``gid``."""
    cur = await pg.execute(
        "SELECT transaction = xid(%s::text::xid8) FROM pg_prepared_xacts WHERE gid = %s",
        (xid, gid),
    )
    row = await cur.fetchone()
    return None if row is None else bool(row[0])


async def prepare(gid: str, user_id: str, add: int, invocation: str) -> Prepared:
    """Add the credits and PREPARE the transaction as ``gid``; or adopt the transaction an
    earlier attempt of this invocation prepared as ``gid``. Never rolls anything back.

    A crash before PREPARE leaves nothing (the open transaction dies with its session). A crash
    after it leaves a prepared transaction that the retry of this step adopts. Looking for it
    is one query (the transaction, its xid and the balance it leaves, together), so the normal
    path pays a single round trip for it.
    """
    async with (
        _gid_lock(gid),
        _prepare_slots(),
        boundary.database_errors(f"adding {add} credits to {user_id!r}"),
        _session() as pg,
    ):
        await failpoints.hit(BEFORE_LEFTOVER_CHECK, invocation)
        prepared = await _adoptable(pg, gid, user_id, add)
        if prepared is not None:
            log.warning(
                "adopted %s (xid %d), prepared by an earlier attempt of this invocation",
                gid,
                prepared.xid,
            )
        else:
            # Never server-side prepared (psycopg would, after five runs): it saves nothing on
            # a BEGIN, and pg_stat_statements stops counting a prepared BEGIN (`dbpatterns
            # bench`).
            await pg.execute("BEGIN", prepare=False)
            params = {"add": add, "user_id": user_id}
            row = await db.fetch_one(pg, ADD_CREDITS_NOTING_XID, params)
            if row is None:
                raise user_not_found(user_id)  # the open transaction is rolled back on the way out
            prepared = Prepared(gid=gid, xid=int(row[1]), credits=row[0])
            await failpoints.hit(BEFORE_PREPARE, invocation)
            await pg.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    await failpoints.hit(AFTER_PREPARE, invocation)
    return prepared


async def commit(prepared: Prepared, invocation: str) -> str:
    """COMMIT PREPARED; idempotent: a retry after a commit that Restate did not record asks
    Postgres whether the transaction committed instead of failing with 42704 forever. It
    commits only the transaction the prepare step journaled (by xid), never one a zombie
    attempt prepared later under the same gid."""
    async with (
        _gid_lock(prepared.gid),
        boundary.database_errors(f"committing {prepared.gid}"),
        _session() as pg,
    ):
        await failpoints.hit(BEFORE_COMMIT, invocation)
        try:
            if await _prepared_is_ours(pg, prepared.gid, prepared.xid) is False:
                # A zombie attempt of the prepare step woke after ours was journaled (and
                # perhaps committed), and prepared the credits again under the same gid.
                # Committing that would add them twice: roll it back, then decide by ours.
                await _rollback_prepared(pg, prepared.gid)
                log.warning("%s: rolled back a zombie's second prepare", prepared.gid)
                raise psycopg.errors.UndefinedObject("ours is no longer prepared")
            await pg.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(prepared.gid)))
            outcome = "committed"
        except psycopg.errors.UndefinedObject:
            status = await _xact_status(pg, prepared.xid)
            if status == "committed":
                outcome = "found committed by an earlier attempt"
                log.warning("%s: 42704, but xid %d committed: done", prepared.gid, prepared.xid)
            elif status == "aborted":
                raise restate.TerminalError(
                    f"the prepared transaction {prepared.gid} (xid {prepared.xid}) was rolled "
                    "back before it could be committed (by `dbpatterns janitor` or by hand): "
                    "the credits were NOT added; call again to add them",
                    status_code=500,
                ) from None
            else:  # 'in progress' without its gid, or forgotten: do not guess, retry
                raise RuntimeError(
                    f"{prepared.gid} is gone but transaction {prepared.xid} is {status!r}"
                ) from None
    await failpoints.hit(AFTER_COMMIT, invocation)
    return outcome


async def roll_back(gid: str, xid: int | None) -> Cleanup:
    """ROLLBACK PREPARED, after any step of this invocation still running here has finished.
    Idempotent; reports what it found."""
    async with (
        _gid_lock(gid),
        boundary.database_errors(f"rolling back {gid}"),
        _session() as pg,
    ):
        if await _rollback_prepared(pg, gid):
            return "rolled back"
        if xid is None:
            return "nothing prepared"
        status = await _xact_status(pg, xid)
    if status == "committed":
        return "committed"
    if status == "aborted":
        return "already rolled back"
    raise RuntimeError(f"{gid} is gone but transaction {xid} is {status!r}")


# --- the handler -------------------------------------------------------------------------------


@two_phase_commit.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.Context, payload: Any) -> Committed:
    """Add credits exactly once; survives a crash anywhere (see the module docstring)."""
    req = boundary.parse(UpdateCredits, payload)
    invocation = ctx.request().id
    gid = gid_for(invocation)
    prepared: Prepared | None = None
    try:
        prepared = await ctx.run_typed(
            "add credits, PREPARE TRANSACTION",
            prepare,
            restate.RunOptions(type_hint=Prepared),
            gid,
            req.user_id,
            req.add_credits,
            invocation,
        )
        outcome = await ctx.run_typed(
            "COMMIT PREPARED", commit, restate.RunOptions(type_hint=str), prepared, invocation
        )
    except restate.TerminalError as exc:
        # Cancelled (409), unknown user (404), refused by the database, rolled back by someone
        # else: whatever ends this invocation, no prepared transaction of it stays behind.
        xid = prepared.xid if prepared else None
        cleanup = await ctx.run_typed(
            "ROLLBACK PREPARED", roll_back, restate.RunOptions(type_hint=str), gid, xid
        )
        log.log(
            logging.INFO if cleanup == "nothing prepared" else logging.WARNING,
            "update %r failed (%s): %s %s (invocation %s)",
            req.user_id,
            exc.message,
            cleanup,
            gid,
            invocation,
        )
        if cleanup == "committed" and prepared is not None:
            # A cancellation raced a COMMIT PREPARED that went through: the credits are added.
            return Committed(committed=True, credits=prepared.credits, transaction=gid)
        raise
    log.info(
        "update %r +%d -> %d: %s (%s, invocation %s)",
        req.user_id,
        req.add_credits,
        prepared.credits,
        outcome,
        gid,
        invocation,
    )
    return Committed(committed=True, credits=prepared.credits, transaction=gid)
