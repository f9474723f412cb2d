"""The service the test kit's own tests serve: a stock reservation built on the library, as a
user would build it, and the same reservation with a user's mistake (``reserveCareless``) that
the kit must catch."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import restate
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from dbpatterns.exactly_once import Connection, IdempotencyTokens, idempotent_transaction

pool = AsyncConnectionPool(os.environ["DATABASE_URL"], open=False, min_size=1, max_size=4)


@asynccontextmanager
async def pool_open() -> AsyncIterator[None]:
    await pool.open()
    yield


stock = restate.Service("stock", invocation_context_managers=[pool_open])
tokens = IdempotencyTokens(stock, pool=lambda: pool, ttl=timedelta(minutes=5))

TAKE = "UPDATE stock SET available = available - %s WHERE sku = %s RETURNING available"


class Reserve(BaseModel):
    sku: str
    quantity: int


class Reserved(BaseModel):
    sku: str
    left: int


async def take(conn: Connection, req: Reserve) -> Reserved:
    row = await (await conn.execute(TAKE, (req.quantity, req.sku))).fetchone()
    if row is None:
        raise restate.TerminalError(f"no such sku: {req.sku}", status_code=404)
    return Reserved(sku=req.sku, left=row[0])


@stock.handler()
async def reserve(ctx: restate.Context, req: Reserve) -> Reserved:
    async def work(conn: Connection) -> Reserved:
        return await take(conn, req)

    done = await idempotent_transaction(ctx, pool, work, tokens=tokens, result_type=Reserved)
    return done.result


@stock.handler("reserveCareless")
async def reserve_careless(ctx: restate.Context, req: Reserve) -> Reserved:
    """The mistake: the write runs outside the library's transaction (and outside any durable
    step), and the library's call only reads. A retry writes again."""
    async with pool.connection() as conn:
        await take(conn, req)

    async def read(conn: Connection) -> Reserved:
        cur = await conn.execute("SELECT available FROM stock WHERE sku = %s", (req.sku,))
        row = await cur.fetchone()
        return Reserved(sku=req.sku, left=row[0] if row else -1)

    done = await idempotent_transaction(ctx, pool, read, tokens=tokens, result_type=Reserved)
    return done.result


app = restate.app([stock])
