"""idempotency: exactly-once credit updates through a token written in the same transaction.

Guarantee: ``update`` adds the credits exactly once per invocation, whatever crashes, retries or
zombie attempts happen, and whoever else writes the row; an error answer (a 404, a
cancellation, the deadline passed) means the credits were not added and never will be.

How (``dbpatterns.exactly_once.idempotent_transaction``): the handler takes a token for the call
(``<invocation id>:<16 hex digits>`` drawn from ``ctx.uuid()``: random, but the same on every
attempt of the invocation) and, in ONE
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

Tokens expire, so the table does not grow forever, each by its own TTL
(``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL``, 1 day by default): BEFORE the transaction, the handler
schedules ``expireIdempotencyKey`` (a private handler the library registers on this service)
with the token, as Restate's TypeScript example does, so an invocation that ends, hangs or keeps
failing anywhere after its commit has its token expire all the same. For an unknown user (404)
the call marks its token ``failed`` (no late attempt of it may add the credits) and that row
expires the same way.

The TTL is also the call's deadline: the transaction's last statement before COMMIT refuses to
go on once the call is older than the TTL, and the token is kept a TTL longer than that. So a
zombie attempt that wakes after the token expired, or an invocation that keeps retrying past
the TTL, cannot add the credits a second time: it fails with a 504 and writes nothing (the
window Restate's TypeScript example leaves open). The TTL must therefore be longer than any
invocation stays unfinished before it commits.

A token whose own expiry never runs (an invocation killed through Restate kills its scheduled
expiry with it, restate-server 1.7.12, measured) is swept by the next expiry, which deletes
every token whose own expiry has passed.
"""

from __future__ import annotations

import logging
from typing import Any

import restate

from dbpatterns.config import get_settings
from dbpatterns.exactly_once import IdempotencyTokens, idempotent, idempotent_transaction
from dbpatterns.patterns import users
from dbpatterns.patterns.models import Applied, Balance, UpdateCredits
from dbpatterns.service import boundary, db, failpoints

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

    done = await idempotent_transaction(
        ctx,
        db.pool(),
        add_credits,
        tokens=TOKENS,
        result_type=Balance,
        step="add credits with token",
    )
    log.info(
        "update %r +%d -> %s, token %s",
        req.user_id,
        req.add_credits,
        done.result,
        done.call_id,
    )
    return Applied(credits=done.result.credits, token=done.call_id)
