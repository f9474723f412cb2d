"""simple: a handler's database access done as any microservice would do it.

Guarantee: each statement runs in its own transaction, parameterised, with bad input refused
(400) before it reaches the database. Restate retries a handler that fails or crashes, so every
write here is written to be harmless when it runs twice:

* ``read`` is a plain SELECT outside any durable step. A retry reads again and may see a newer
  row. That is fine for a handler whose only effect is its answer; it is wrong for a handler
  that *decides* something on the value (see ``durableRead``).
* ``durableRead`` reads the credits inside a durable step ("read credits"). Restate journals the
  value, so every retry of the invocation sees the same number and takes the same branch (a
  zero balance raises the alert on every attempt that gets that far, or on none).
* ``insert`` is ``INSERT ... ON CONFLICT (userid) DO NOTHING``: a retry or a repeated call
  leaves the first row as it is. Window left open: a crash after the commit but before the
  answer reached Restate makes the retry answer ``{"inserted": false}`` for a row that this
  very call inserted. The row is right; the answer describes the last attempt, not the call.
* ``update`` sets the name (a value, not an increment), so running it twice is the same as
  once. ``updated`` is false when the name already had that value, including after such a
  crash.

Adding credits this way would not be safe: ``credits = credits + n`` run twice adds twice. The
``keyed`` and ``idempotency`` patterns show how to make that exactly-once.
"""

from __future__ import annotations

import logging
from typing import Any

import restate

from dbpatterns.patterns.models import (
    Balance,
    Inserted,
    NewUser,
    Rename,
    Updated,
    User,
    UserKey,
)
from dbpatterns.patterns.users import read_balance, user_not_found
from dbpatterns.service import boundary, db, failpoints

log = logging.getLogger("dbpatterns.simple")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

simple = restate.Service("simple")

INSERT_AFTER_COMMIT = failpoints.declare(
    "simple.insert.after-commit",
    "simple.insert, after the INSERT committed, before the answer",
    "the retry answers inserted=false and leaves the one row as it is",
)
UPDATE_AFTER_COMMIT = failpoints.declare(
    "simple.update.after-commit",
    "simple.update, after the UPDATE committed, before the answer",
    "setting a value twice is harmless: one row, the new name",
)


SELECT_USER = "SELECT userid, name, address, credits, version FROM users WHERE userid = %s"
INSERT_USER = """
    INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s)
    ON CONFLICT (userid) DO NOTHING
    RETURNING userid
"""
RENAME_USER = """
    UPDATE users SET name = %(name)s
    WHERE userid = %(user_id)s AND name IS DISTINCT FROM %(name)s
    RETURNING userid
"""
USER_EXISTS = "SELECT EXISTS (SELECT FROM users WHERE userid = %s)"


@simple.handler(name="read", input_serde=boundary.JSON_INPUT)
async def read(ctx: restate.Context, payload: Any) -> User:
    """The user row. Not journaled: a retry reads again."""
    user_id = boundary.parse_value(UserKey, payload).value
    async with boundary.database_errors(f"reading user {user_id!r}"), db.connection() as conn:
        row = await db.fetch_one(conn, SELECT_USER, (user_id,))
    if row is None:
        raise user_not_found(user_id)
    userid, name, address, credits, version = row
    return User(user_id=userid, name=name, address=address, credits=credits, version=version)


@simple.handler(name="durableRead", input_serde=boundary.JSON_INPUT)
async def durable_read(ctx: restate.Context, payload: Any) -> Balance:
    """The user's credits, read once per invocation: a retry replays the journaled value."""
    user_id = boundary.parse_value(UserKey, payload).value
    invocation = ctx.request().id

    async def read_credits() -> Balance:
        return await read_balance(user_id)  # a 404 is journaled too: every retry gets it

    balance = await ctx.run_typed(
        "read credits", read_credits, restate.RunOptions(type_hint=Balance)
    )
    if balance.credits == 0:
        # The branch follows the journaled value: the same decision on every attempt.
        log.warning("ALERT: user %r has no credits left (invocation %s)", user_id, invocation)
    return balance


@simple.handler(name="insert", input_serde=boundary.JSON_INPUT)
async def insert(ctx: restate.Context, payload: Any) -> Inserted:
    """Create a user unless one with this id exists. A repeat changes nothing; after a crash
    between the commit and the answer, the retry answers ``inserted: false``."""
    req = boundary.parse(NewUser, payload)
    invocation = ctx.request().id
    row = (req.user_id, req.name, req.address, req.credits)
    async with (
        boundary.database_errors(f"inserting user {req.user_id!r}"),
        db.connection() as conn,
    ):
        inserted = await db.fetch_one(conn, INSERT_USER, row) is not None
    await failpoints.hit(INSERT_AFTER_COMMIT, invocation)
    log.info("insert %r: inserted=%s (invocation %s)", req.user_id, inserted, invocation)
    return Inserted(inserted=inserted)


@simple.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.Context, payload: Any) -> Updated:
    """Set a user's name. Idempotent: the second run finds the name already set."""
    req = boundary.parse(Rename, payload)
    invocation = ctx.request().id
    rename = {"user_id": req.user_id, "name": req.new_name}
    async with (
        boundary.database_errors(f"renaming user {req.user_id!r}"),
        db.connection() as conn,
    ):
        updated = await db.fetch_one(conn, RENAME_USER, rename) is not None
        exists = updated or await db.fetch_one(conn, USER_EXISTS, (req.user_id,)) == (True,)
    if not exists:
        raise user_not_found(req.user_id)
    await failpoints.hit(UPDATE_AFTER_COMMIT, invocation)
    log.info("update %r: updated=%s (invocation %s)", req.user_id, updated, invocation)
    return Updated(updated=updated)
