"""keyed: one writer at a time per user, through a Restate virtual object keyed by user id.

Restate runs at most one exclusive handler of an object key at a time (later calls queue), so
two calls for the same user never race each other in the database. That alone does not make a
write exactly-once:

* ``update`` adds credits with ``UPDATE users SET credits = credits + n`` in a durable step.
  **Not duplicate-safe.** If the service dies after the transaction commits but before Restate
  records the step's result, the retry runs the UPDATE again and the credits are added twice.
  A zombie attempt (a paused process Restate gave up on, which later wakes) can add them again
  too. The window is small, not zero.
* ``updateConditional`` closes that window for writes that go through this object. It reads
  ``(credits, version)`` in one durable step, then writes ``credits = read + n, version =
  read_version + 1 WHERE version = read_version`` in a second. The read is journaled, so every
  attempt of the invocation writes the same values under the same condition, and the object
  guarantees that no other call on this key runs between the two steps. The write also marks
  the row with the call's id (``written_by``). If the write matches no row, the row's mark says
  who moved the version: this call (an earlier or zombie attempt of it already applied the
  credits: done, once) or another writer (the credits were NOT added: a 409 says so).

  The object's promise holds while every credit write to the row goes through it, and while no
  invocation ends with an attempt of it frozen. A writer outside it (``idempotency.update``,
  ``twoPhaseCommit``, psql) that changes the row between the read and the write, or a frozen
  attempt of a killed call that wakes and writes, makes the write miss: the update fails with
  409 instead of being lost behind a 200. Route all writes of a key through its object, or use
  the ``idempotency`` pattern, which does not depend on who else writes.
* ``read`` is a *shared* handler: it runs alongside the exclusive ones instead of queueing
  behind them, and only reads (a plain SELECT, not journaled).

Every credit write also increments ``version``, so the version counts credit writes.
"""

from __future__ import annotations

import logging
from typing import Any

import restate
from pydantic import TypeAdapter, ValidationError

from dbpatterns.exactly_once import versioned
from dbpatterns.exactly_once.versioned import versioned_update
from dbpatterns.patterns import users
from dbpatterns.patterns.models import Balance, CreditsToAdd, MarkedBalance
from dbpatterns.service import boundary, db, failpoints

log = logging.getLogger("dbpatterns.keyed")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

keyed = restate.VirtualObject("keyed")

UPDATE_BEFORE_WRITE = failpoints.declare(
    "keyed.update.before-write",
    "keyed.update, in the durable step, before the UPDATE",
    "a crash before the write: the retry adds the credits once",
)
UPDATE_AFTER_COMMIT = failpoints.declare(
    "keyed.update.after-commit",
    "keyed.update, after the UPDATE committed, before Restate records the step",
    "the known hole: the retry adds the credits a second time",
)
failpoints.declare_library_points("keyed.updateConditional", versioned.POINTS)

READ_MARKED = "SELECT credits, version, written_by FROM users WHERE userid = %s"
WRITE_IF_VERSION_UNCHANGED = """
    UPDATE users SET credits = %(credits)s, version = %(version)s, written_by = %(mark)s
    WHERE userid = %(user_id)s AND version = %(seen_version)s
    RETURNING credits, version, written_by
"""

_USER_ID: TypeAdapter[str] = TypeAdapter(boundary.UserId)


def user_key(ctx: restate.ObjectSharedContext | restate.ObjectContext) -> str:
    """The object key, which must be a valid user id (400 otherwise)."""
    key = ctx.key()
    try:
        return _USER_ID.validate_python(key)
    except ValidationError as exc:
        problem = "; ".join(e["msg"] for e in exc.errors(include_url=False))
        raise boundary.bad_request(
            f"the object key {key!r} is not a user id ({problem}): use 1-"
            f"{boundary.MAX_USER_ID_LENGTH} letters, digits or _ . : -"
        ) from None


@keyed.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.ObjectContext, payload: Any) -> Balance:
    """Add credits. A crash after the commit and before the step is recorded adds them twice."""
    user_id = user_key(ctx)
    add = boundary.parse_value(CreditsToAdd, payload).value
    invocation = ctx.request().id

    async def add_credits() -> Balance:
        await failpoints.hit(UPDATE_BEFORE_WRITE, invocation)
        async with (
            boundary.database_errors(f"adding {add} credits to {user_id!r}"),
            db.connection() as conn,
        ):
            balance = await users.add_credits(conn, user_id, add)
        # NOT DUPLICATE-SAFE: committed, but Restate has not recorded this step yet. If the
        # process dies here, the retry runs this step again and adds the credits a second time.
        await failpoints.hit(UPDATE_AFTER_COMMIT, invocation)
        return balance

    balance = await ctx.run_typed("add credits", add_credits, restate.RunOptions(type_hint=Balance))
    log.info("update %r +%d -> %s (invocation %s)", user_id, add, balance, invocation)
    return balance


@keyed.handler(name="updateConditional", input_serde=boundary.JSON_INPUT)
async def update_conditional(ctx: restate.ObjectContext, payload: Any) -> Balance:
    """Add credits exactly once: a journaled read, then a write conditional on its version."""
    user_id = user_key(ctx)
    add = boundary.parse_value(CreditsToAdd, payload).value

    async def read_marked(conn: db.Connection) -> MarkedBalance:
        row = await db.fetch_one(conn, READ_MARKED, (user_id,))
        if row is None:
            raise users.user_not_found(user_id)
        return MarkedBalance(credits=row[0], version=row[1], written_by=row[2])

    async def write_if_unchanged(
        conn: db.Connection, seen: MarkedBalance, mark: str
    ) -> MarkedBalance | None:
        write = {
            "credits": seen.credits + add,
            "version": seen.version + 1,
            "mark": mark,
            "user_id": user_id,
            "seen_version": seen.version,
        }
        row = await db.fetch_one(conn, WRITE_IF_VERSION_UNCHANGED, write)
        return (
            None
            if row is None
            else MarkedBalance(credits=row[0], version=row[1], written_by=row[2])
        )

    done = await versioned_update(
        ctx,
        db.pool(),
        read=read_marked,
        write=write_if_unchanged,
        state_type=MarkedBalance,
        read_step="read credits, version",
        write_step="write credits if version unchanged",
    )
    after = Balance(credits=done.result.credits, version=done.result.version)
    log.info("updateConditional %r +%d -> %s (call %s)", user_id, add, after, done.call_id)
    return after


@keyed.handler(name="read", kind="shared")
async def read(ctx: restate.ObjectSharedContext) -> Balance:
    """Credits and version now. Shared: not queued behind a running update of the same key."""
    return await users.read_balance(user_key(ctx))
