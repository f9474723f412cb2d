"""idempotency: exactly-once credit updates through a token written in the same transaction.

Guarantee: ``update`` adds the credits exactly once per invocation, whatever crashes, retries or
zombie attempts happen, and whoever else writes the row.

How (``dbpatterns.exactly_once.idempotent_transaction``): the handler takes a token from
Restate (``ctx.uuid()``: random, but the same on every attempt of the invocation) and, in ONE
transaction, inserts the token into ``user_idempotency`` with ``ON CONFLICT DO NOTHING``, adds
the credits and stores the balance it left in the token's row. Token, credits and balance
commit together or not at all. An attempt that finds the token already there knows an earlier
attempt committed: it adds nothing and answers with the recorded balance. This is the DBOS
idea: record that the step ran, with its output, in the same transaction as its effect.

Concurrency: READ COMMITTED is enough. Two attempts of one invocation (a retry and a zombie)
insert the same token; the primary key makes the second wait for the first and then find the
row (commit) or insert it (rollback), so exactly one adds. Every transaction takes its locks in
the same order (token, then user row), so they cannot deadlock each other; a deadlock, lock
timeout or lost connection anyway raises a retryable error and Restate retries the step.

Tokens expire, so the table does not grow forever. BEFORE the transaction, the handler
schedules ``expireIdempotencyKey`` (a private handler the library registers on this service)
with the token, ``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL`` later
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
from dbpatterns.exactly_once import IdempotencyTokens, idempotent, idempotent_transaction
from dbpatterns.patterns import users
from dbpatterns.patterns.models import Applied, Balance, UpdateCredits

log = logging.getLogger("dbpatterns.idempotency")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

idempotency = restate.Service("idempotency")

failpoints.declare_library_points("idempotency.update", idempotent.POINTS)

#: ``user_idempotency``, and ``idempotency.expireIdempotencyKey`` that expires its tokens.
TOKENS = IdempotencyTokens(
    idempotency,
    pool=db.pool,
    ttl=get_settings().idempotency_token_ttl,
    table="user_idempotency",
)


@idempotency.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.Context, payload: Any) -> Applied:
    """Add credits exactly once; survives a crash anywhere (see the module docstring)."""
    req = boundary.parse(UpdateCredits, payload)

    async def add_credits(conn: db.Connection) -> Balance:
        return await users.add_credits(conn, req.user_id, req.add_credits)

    once = await idempotent_transaction(
        ctx,
        db.pool(),
        add_credits,
        tokens=TOKENS,
        result_type=Balance,
        step="add credits with token",
    )
    log.info(
        "update %r +%d -> %s, first=%s, token %s (invocation %s)",
        req.user_id,
        req.add_credits,
        once.result,
        once.first,
        once.token,
        ctx.request().id,
    )
    return Applied(applied=once.first, credits=once.result.credits, token=once.token)
