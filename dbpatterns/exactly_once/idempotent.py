"""An idempotent transaction: exactly once through a token written in the same transaction.

Guarantee: the caller's work commits exactly once per invocation, whatever crashes, retries or
zombie attempts happen, and whoever else writes the same rows; every attempt answers with the
result of the one that committed.

How: the invocation's token (``ctx.uuid()``: random, but the same on every attempt) is inserted
into the token table in ONE transaction with the caller's work, and the work's result is stored
in the token's row. Token, work and result commit together or not at all. An attempt that finds
the token already there knows an earlier attempt committed: it runs no work and returns the
recorded result. This is the idea DBOS builds on: record that a step ran, with its output, in
the same transaction as its effect.

Concurrency: READ COMMITTED is enough. Two attempts of one invocation (a retry and a zombie)
insert the same token; the primary key makes the second wait for the first and then find the
row (commit) or insert it (rollback), so exactly one runs the work to commit. The token is
claimed first, so the work's locks are always taken after it.

Tokens expire so the table does not grow: BEFORE the transaction, the call schedules the
token's expiry (``IdempotencyTokens.ttl`` later) through a private handler on the caller's
service. The schedule is in Restate's journal before the token can be in the table, so an
invocation that ends, hangs or keeps failing anywhere after its commit still has its token
expire. A kill through Restate (``restate invocations kill``) also kills the delayed calls the
invocation scheduled (restate-server 1.7, measured), so every expiry also deletes every token
older than the TTL: a token left by a killed invocation goes with the next call's expiry.

Window left open: a zombie attempt that runs its transaction after its token has expired (or a
retry that first commits more than a TTL after the call started) would commit the work again.
Keep the TTL far longer than an attempt can live (the service's inactivity and abort timeouts,
the database's ``idle_in_transaction_session_timeout``) and than an invocation keeps retrying.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Generic, TypeVar

import restate
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, TypeAdapter

from dbpatterns.exactly_once import faults
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.errors import database_errors
from dbpatterns.exactly_once.schema import TOKENS

log = logging.getLogger("dbpatterns.exactly_once.idempotent")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

T = TypeVar("T")

#: The fault points of ``idempotent_transaction``, with what a crash at each one tests.
POINTS = {
    "before-claim": "in the durable step, before the transaction that claims the token: a "
    "zombie resumed here after its token expired commits the work again (the TTL window)",
    "before-commit": "token claimed and work done, not yet committed: a crash rolls both back, "
    "the retry commits once",
    "after-commit": "committed, not yet recorded by Restate: the retry finds its token and "
    "returns the recorded result: exactly once",
    "after-step": "the step is journaled, the handler has not answered: the expiry is "
    "already scheduled, so the token expires; a kill through Restate takes the expiry with it, "
    "and the next call's expiry sweeps the token",
}


class Once(BaseModel, Generic[T]):
    """What ``idempotent_transaction`` returns: the work's ``result``; ``first``: whether this
    attempt committed it (false: an earlier attempt had, and ``result`` is what it recorded);
    ``token``: the row in the token table that records it until it expires."""

    result: T
    first: bool
    token: str


class Expired(BaseModel):
    """An expiry's outcome: ``deleted`` (its own token was there) and ``older`` (tokens older
    than the TTL it swept)."""

    deleted: bool
    older: int


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class IdempotencyTokens:
    """A token table, its TTL, and the private handler on the caller's service that expires
    tokens (registered here as ``expiry_handler``, reachable only from Restate).

    ``pool`` is called when an expiry runs (the pool is usually opened after the service is
    defined)."""

    def __init__(
        self,
        service: restate.Service,
        *,
        pool: Callable[[], Pool],
        ttl: timedelta,
        table: str = TOKENS,
        expiry_handler: str = "expireIdempotencyKey",
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"the token TTL must be positive, not {ttl}")
        self.ttl = ttl
        self.table = table
        name = sql.Identifier(table)
        self._claim = sql.SQL(
            "INSERT INTO {} (id) VALUES (%s) ON CONFLICT (id) DO NOTHING RETURNING id"
        ).format(name)
        self._record = sql.SQL("UPDATE {} SET result = %s WHERE id = %s").format(name)
        self._recorded = sql.SQL("SELECT result FROM {} WHERE id = %s").format(name)
        #: This token, and every token older than the TTL (whose own expiry was killed).
        self._expire = sql.SQL(
            "WITH gone AS (DELETE FROM {} WHERE id = %(token)s OR created_at < now() - %(ttl)s "
            "RETURNING id) SELECT count(*) FILTER (WHERE id = %(token)s), "
            "count(*) FILTER (WHERE id <> %(token)s) FROM gone"
        ).format(name)

        async def expire(ctx: restate.Context, token: str) -> Expired:
            """Forget a token and every token older than the TTL. Private: deleting a live
            token early would let a zombie attempt commit its work again."""

            if not isinstance(token, str) or not _is_uuid(token):
                raise restate.TerminalError(
                    f"not an idempotency token: {token!r} (expected a UUID)", status_code=400
                )

            async def delete_tokens() -> Expired:
                async with database_errors(f"expiring token {token}"), pool().connection() as c:
                    cur = await c.execute(self._expire, {"token": token, "ttl": self.ttl})
                    row = await cur.fetchone()
                mine, older = row if row is not None else (0, 0)
                return Expired(deleted=mine == 1, older=older)

            # Journaled: a replay must answer what the first attempt found.
            expired = await ctx.run_typed(
                "delete token and expired ones",
                delete_tokens,
                restate.RunOptions(type_hint=Expired),
            )
            log.info("token %s expired: %s (invocation %s)", token, expired, ctx.request().id)
            return expired

        self._expiry = service.handler(name=expiry_handler, ingress_private=True)(expire)

    def schedule_expiry(self, ctx: restate.Context, token: str) -> None:
        ctx.service_send(self._expiry, token, send_delay=self.ttl)

    async def claim(self, conn: Connection, token: str) -> bool:
        """Insert ``token``; False if it is there (waits for a transaction inserting it)."""
        return await (await conn.execute(self._claim, (token,))).fetchone() is not None

    async def record(self, conn: Connection, token: str, result: Any) -> None:
        """Store a claimed token's result (JSON-ready Python data)."""
        await conn.execute(self._record, (Jsonb(result), token))

    async def recorded(self, conn: Connection, token: str) -> Any:
        """The result stored with ``token`` by the attempt that committed it."""
        row = await (await conn.execute(self._recorded, (token,))).fetchone()
        if row is None or row[0] is None:
            raise RuntimeError(f"token {token} in {self.table} has no recorded result")
        return row[0]


async def idempotent_transaction(
    ctx: restate.Context,
    pool: Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    tokens: IdempotencyTokens,
    result_type: type[T],
    step: str = "transaction with token",
) -> Once[T]:
    """Run ``work(conn)`` exactly once, in one transaction with the invocation's token.

    ``work`` runs inside the transaction (do not commit in it); its result, of ``result_type``
    (a pydantic model, dataclass or JSON value), is stored with the token and journaled. It may
    raise ``restate.TerminalError`` (a 404, a 409): the transaction, token included, rolls
    back, and the error ends the call. Database errors a retry can fix are retried; the
    others end the call with a 4xx.
    """
    token = str(ctx.uuid())  # the same on every attempt of this invocation
    # Scheduled before the token can exist: whatever ends this invocation after its commit
    # (short of a kill through Restate, see the module docstring), the token expires.
    tokens.schedule_expiry(ctx, token)
    adapter: TypeAdapter[T] = TypeAdapter(result_type)
    once_type: type[Once[T]] = Once[result_type]  # type: ignore[valid-type]

    async def once() -> Once[T]:
        await faults.reach(ctx, "before-claim")
        async with database_errors(step), pool.connection() as conn, conn.transaction():
            first = await tokens.claim(conn, token)
            if first:
                result = await work(conn)
                await tokens.record(conn, token, adapter.dump_python(result, mode="json"))
            else:
                result = adapter.validate_python(await tokens.recorded(conn, token))
            await faults.reach(ctx, "before-commit")
        await faults.reach(ctx, "after-commit")
        if not first:
            log.warning(
                "%s: token %s already recorded, an earlier attempt committed; returning its "
                "result (invocation %s)",
                step,
                token,
                ctx.request().id,
            )
        return once_type(result=result, first=first, token=token)

    done = await ctx.run_typed(step, once, restate.RunOptions(type_hint=once_type))
    await faults.reach(ctx, "after-step")
    return done
