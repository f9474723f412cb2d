"""idempotency: exactly-once credit updates through a token written in the same transaction.

Guarantee: ``update`` adds the credits exactly once per invocation, whatever crashes, retries or
zombie attempts happen, and whoever else writes the row.

How: the handler takes a token from Restate (``ctx.uuid()``: random, but the same on every
attempt of the invocation) and, in ONE transaction, inserts the token into
``user_idempotency`` with ``ON CONFLICT DO NOTHING`` and adds the credits. The token and the
credits commit together or not at all. An attempt that finds the token already there knows an
earlier attempt committed, and adds nothing. This is the DBOS idea: record that the step ran in
the same transaction as its effect.

Concurrency: READ COMMITTED is enough. Two attempts of one invocation (a retry and a zombie)
insert the same token; the primary key makes the second wait for the first and then find the
row (commit) or insert it (rollback), so exactly one adds. Every transaction takes its locks in
the same order (token, then user row), so they cannot deadlock each other; a deadlock, lock
timeout or lost connection anyway raises a retryable error and Restate retries the step.

Tokens expire, so the table does not grow forever. BEFORE the transaction, the handler
schedules ``expireIdempotencyKey`` with the token, ``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL`` later
(1 day by default), as Restate's TypeScript example does: the schedule is in the journal before
the token can be in the table, so an invocation that ends, hangs or keeps failing anywhere after
its commit has its token expire all the same. For an unknown user (404) the expiry finds no
token: harmless.

Windows left open:

* The expiry counts from when the call started, not from the commit. A step Restate has
  recorded never runs again, so only an attempt still running when the expiry has deleted the
  token could add the credits a second time: a zombie attempt alive after the TTL, or an
  invocation that keeps retrying for longer than the TTL before its transaction commits (it
  would insert its token after the expiry ran, and that token would then never expire). The
  TTL must be far longer than any invocation stays unfinished and than any attempt can live
  (the service's inactivity + abort timeouts, the database's
  ``idle_in_transaction_session_timeout``).

A token whose own expiry never runs is swept by the next one: every ``expireIdempotencyKey``
also deletes the tokens older than the TTL (by ``created_at``, indexed). That covers an
invocation killed through Restate (``restate invocations kill``) after its commit:
restate-server (1.7.12, measured) kills the delayed calls an invocation scheduled together with
it, so its own expiry goes too; and a token inserted after its expiry ran (above). Such a token
lives until the next call's expiry, at most TTL after that call; a token left so is only a row,
never a wrong balance.
"""

from __future__ import annotations

import logging
from typing import Any

import restate

from dbpatterns import boundary, db, failpoints
from dbpatterns.config import get_settings
from dbpatterns.patterns.models import Applied, Deleted, IdempotencyToken, UpdateCredits
from dbpatterns.patterns.simple import user_not_found

log = logging.getLogger("dbpatterns.idempotency")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

idempotency = restate.Service("idempotency")

UPDATE_BEFORE_CLAIM = failpoints.declare(
    "idempotency.update.before-claim",
    "idempotency.update, in the durable step, before the transaction that claims the token",
    "a zombie resumed here after its token expired adds the credits again (the TTL window)",
)
UPDATE_BEFORE_COMMIT = failpoints.declare(
    "idempotency.update.before-commit",
    "idempotency.update, token inserted and credits added, transaction not yet committed",
    "a crash rolls back token and credits together: the retry adds once",
)
UPDATE_AFTER_COMMIT = failpoints.declare(
    "idempotency.update.after-commit",
    "idempotency.update, after the commit, before Restate records the step",
    "the retry finds its token and adds nothing: exactly once",
)
UPDATE_AFTER_STEP = failpoints.declare(
    "idempotency.update.after-step",
    "idempotency.update, after the transaction's step is journaled, before the handler answers",
    "the expiry is already scheduled: a crash or failure here still has the token expire; a kill "
    "through Restate takes the scheduled expiry with it and leaves the token",
)

CLAIM_TOKEN = """
    INSERT INTO user_idempotency (id) VALUES (%s)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
"""
ADD_CREDITS = """
    UPDATE users SET credits = credits + %(add)s, version = version + 1
    WHERE userid = %(user_id)s
    RETURNING credits
"""
SELECT_CREDITS = "SELECT credits FROM users WHERE userid = %(user_id)s"
#: This token, and every token older than the TTL (whose own expiry was killed or ran early).
DELETE_TOKEN_AND_EXPIRED = """
    WITH gone AS (
        DELETE FROM user_idempotency
        WHERE id = %(token)s OR created_at < now() - %(ttl)s
        RETURNING id
    )
    SELECT count(*) FILTER (WHERE id = %(token)s), count(*) FILTER (WHERE id <> %(token)s)
    FROM gone
"""


@idempotency.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.Context, payload: Any) -> Applied:
    """Add credits exactly once; survives a crash anywhere (see the module docstring)."""
    req = boundary.parse(UpdateCredits, payload)
    invocation = ctx.request().id
    token = str(ctx.uuid())  # the same on every attempt of this invocation
    # Scheduled first: whatever ends this invocation after the transaction (a kill through
    # Restate runs no more handler code), the token expires.
    ctx.service_send(expire_idempotency_key, token, send_delay=get_settings().idempotency_token_ttl)

    async def add_credits_once() -> Applied:
        params = {"add": req.add_credits, "user_id": req.user_id}
        await failpoints.hit(UPDATE_BEFORE_CLAIM, invocation)
        async with (
            boundary.database_errors(f"adding {req.add_credits} credits to {req.user_id!r}"),
            db.transaction() as conn,
        ):
            first = await db.fetch_one(conn, CLAIM_TOKEN, (token,)) is not None
            row = await db.fetch_one(conn, ADD_CREDITS if first else SELECT_CREDITS, params)
            if row is None:
                # Unknown user: raising here rolls the token back with everything else.
                raise user_not_found(req.user_id)
            (credits,) = row
            await failpoints.hit(UPDATE_BEFORE_COMMIT, invocation)
        await failpoints.hit(UPDATE_AFTER_COMMIT, invocation)
        if not first:
            log.warning(
                "token %s already recorded: an earlier attempt added the credits, adding "
                "nothing (invocation %s)",
                token,
                invocation,
            )
        return Applied(applied=first, credits=credits, token=token)

    result = await ctx.run_typed(
        "add credits with token", add_credits_once, restate.RunOptions(type_hint=Applied)
    )
    await failpoints.hit(UPDATE_AFTER_STEP, invocation)
    log.info(
        "update %r +%d -> %s, token %s (invocation %s)",
        req.user_id,
        req.add_credits,
        result,
        token,
        invocation,
    )
    return result


@idempotency.handler(
    name="expireIdempotencyKey", input_serde=boundary.JSON_INPUT, ingress_private=True
)
async def expire_idempotency_key(ctx: restate.Context, payload: Any) -> Deleted:
    """Forget a token, and every token older than the TTL. Idempotent. Private: only
    ``update`` schedules it, never a client, because deleting a live token early would let a
    zombie attempt add its credits again."""
    token = boundary.parse_value(IdempotencyToken, payload).value

    async def delete_tokens() -> Deleted:
        params = {"token": token, "ttl": get_settings().idempotency_token_ttl}
        async with (
            boundary.database_errors(f"deleting idempotency token {token}"),
            db.connection() as conn,
        ):
            row = await db.fetch_one(conn, DELETE_TOKEN_AND_EXPIRED, params)
        mine, older = row if row is not None else (0, 0)
        return Deleted(deleted=mine == 1, older=older)

    # Journaled, so a replay answers what the first attempt found: the answer depends on the
    # database, and a different one on replay is a journal mismatch.
    deleted = await ctx.run_typed(
        "delete token and expired ones", delete_tokens, restate.RunOptions(type_hint=Deleted)
    )
    log.info("token %s expired: %s (invocation %s)", token, deleted, ctx.request().id)
    return deleted
