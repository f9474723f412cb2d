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
  guarantees that no other call on this key runs between the two steps. If the write matches no
  row, the only writer that can have moved the version is an earlier (or zombie) attempt of this
  same invocation, which already applied it: the step counts it as done. Exactly once.

  The argument holds while every credit write to the row goes through this object. A writer
  outside it (``idempotency.update``, ``twoPhaseCommit``, psql) that changes the row between the
  read and the write makes the second step miss; it then counts someone else's write as its own
  and this update is lost. Route all writes of a key through its object, or use the
  ``idempotency`` pattern, which does not depend on who else writes.
* ``read`` is a *shared* handler: it runs alongside the exclusive ones instead of queueing
  behind them, and only reads (a plain SELECT, not journaled).

Every credit write also increments ``version``, so the version counts credit writes.
"""

from __future__ import annotations

import logging
from typing import Any

import restate
from pydantic import TypeAdapter, ValidationError

from dbpatterns import boundary, db, failpoints
from dbpatterns.patterns.models import Balance, CreditsToAdd
from dbpatterns.patterns.simple import read_balance, user_not_found

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
CONDITIONAL_AFTER_READ = failpoints.declare(
    "keyed.updateConditional.after-read",
    "keyed.updateConditional, after the (credits, version) read is journaled",
    "the retry reuses the journaled read and still adds exactly once",
)
CONDITIONAL_BEFORE_WRITE = failpoints.declare(
    "keyed.updateConditional.before-write",
    "keyed.updateConditional, in the write step, before the conditional UPDATE",
    "a crash before the write: the retry writes once",
)
CONDITIONAL_AFTER_COMMIT = failpoints.declare(
    "keyed.updateConditional.after-commit",
    "keyed.updateConditional, after the conditional UPDATE committed, before Restate records it",
    "the retry's UPDATE matches no row (version moved on) and counts as done: exactly once",
)

ADD_CREDITS = """
    UPDATE users SET credits = credits + %(add)s, version = version + 1
    WHERE userid = %(user_id)s
    RETURNING credits, version
"""
WRITE_IF_VERSION_UNCHANGED = """
    UPDATE users SET credits = %(credits)s, version = %(version)s
    WHERE userid = %(user_id)s AND version = %(seen_version)s
    RETURNING userid
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
            row = await db.fetch_one(conn, ADD_CREDITS, {"add": add, "user_id": user_id})
        if row is None:
            raise user_not_found(user_id)
        credits, version = row
        # NOT DUPLICATE-SAFE: committed, but Restate has not recorded this step yet. If the
        # process dies here, the retry runs this step again and adds the credits a second time.
        await failpoints.hit(UPDATE_AFTER_COMMIT, invocation)
        return Balance(credits=credits, version=version)

    balance = await ctx.run_typed("add credits", add_credits, restate.RunOptions(type_hint=Balance))
    log.info("update %r +%d -> %s (invocation %s)", user_id, add, balance, invocation)
    return balance


@keyed.handler(name="updateConditional", input_serde=boundary.JSON_INPUT)
async def update_conditional(ctx: restate.ObjectContext, payload: Any) -> Balance:
    """Add credits exactly once: a journaled read, then a write conditional on its version."""
    user_id = user_key(ctx)
    add = boundary.parse_value(CreditsToAdd, payload).value
    invocation = ctx.request().id

    async def read_credits_and_version() -> Balance:
        return await read_balance(user_id)

    seen = await ctx.run_typed(
        "read credits, version", read_credits_and_version, restate.RunOptions(type_hint=Balance)
    )
    await failpoints.hit(CONDITIONAL_AFTER_READ, invocation)
    target = Balance(credits=seen.credits + add, version=seen.version + 1)

    async def write_if_unchanged() -> bool:
        await failpoints.hit(CONDITIONAL_BEFORE_WRITE, invocation)
        write = {
            "credits": target.credits,
            "version": target.version,
            "user_id": user_id,
            "seen_version": seen.version,
        }
        async with (
            boundary.database_errors(f"adding {add} credits to {user_id!r}"),
            db.connection() as conn,
        ):
            written = await db.fetch_one(conn, WRITE_IF_VERSION_UNCHANGED, write) is not None
        # Committed but not yet recorded: a retry from here finds the version moved on and
        # writes nothing, which is what makes this handler exactly-once.
        await failpoints.hit(CONDITIONAL_AFTER_COMMIT, invocation)
        if not written:
            log.warning(
                "updateConditional %r: version is no longer %d; an earlier attempt of this "
                "invocation wrote it, counting it as done (invocation %s)",
                user_id,
                seen.version,
                invocation,
            )
        return written

    await ctx.run_typed(
        "write credits if version unchanged",
        write_if_unchanged,
        restate.RunOptions(type_hint=bool),
    )
    log.info("updateConditional %r +%d -> %s (invocation %s)", user_id, add, target, invocation)
    return target


@keyed.handler(name="read", kind="shared")
async def read(ctx: restate.ObjectSharedContext) -> Balance:
    """Credits and version now. Shared: not queued behind a running update of the same key."""
    return await read_balance(user_key(ctx))
