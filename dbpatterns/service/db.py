"""The service's database connections: a psycopg 3 pool, and SQL written out as constants.

Every pooled connection is in autocommit mode, so a transaction is always a visible block in
the handler code, ``async with db.transaction() as conn:``, and a single statement outside one
is its own transaction (one round trip, no BEGIN/COMMIT). The two-phase-commit pattern, which
must send BEGIN ... PREPARE TRANSACTION itself, takes a plain ``db.connection()``.

Every connection carries ``lock_timeout`` and ``idle_in_transaction_session_timeout`` so that a
stuck or zombie transaction cannot hold a row forever, and an ``application_name`` so the lab
(and a human in psql) can tell the service's sessions apart. psycopg prepares a statement on a
connection once it has run there ``PREPARE_THRESHOLD`` times: the handlers' SQL is constant text
with bound parameters, so after warm-up the server only binds and executes it.

The handlers talk to psycopg directly, not through SQLAlchemy (which describes the schema for
Alembic, ``dbpatterns.service.schema``). Measured on the 2-core lab machine, one credit UPDATE
transaction cost the service 0.75 ms of CPU when built and run through SQLAlchemy's async
engine, 0.29 ms as constant SQL on this pool; the service spent more CPU per call than
restate-server did, and this was the largest part of it that the lab controls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from dbpatterns.config import Settings, get_settings
from dbpatterns.service import sqltrace

APPLICATION_NAME = "dbpatterns-service"
#: Executions of the same SQL on a connection after which psycopg prepares it server-side.
PREPARE_THRESHOLD = 5
#: Seconds a caller waits for a free connection before the step fails (and Restate retries).
POOL_TIMEOUT = 10.0

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_pool: AsyncConnectionPool[Connection] | None = None


def create_pool(settings: Settings, *, name: str = APPLICATION_NAME) -> AsyncConnectionPool[Any]:
    """A closed pool of ``settings.pool_size`` autocommit connections; ``await .open()`` it."""
    return AsyncConnectionPool(
        settings.libpq_url,
        min_size=settings.pool_size,
        max_size=settings.pool_size,
        timeout=POOL_TIMEOUT,
        name=name,
        open=False,
        kwargs={
            "autocommit": True,
            "prepare_threshold": PREPARE_THRESHOLD,
            "application_name": name,
            "options": (
                f"-c lock_timeout={settings.lock_timeout_ms} "
                f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
            ),
        },
        connection_class=sqltrace.connection_class(),
    )


async def open_pool() -> None:
    """Create and open the process-wide pool. It connects in the background: the service starts
    while Postgres is still coming up, and a call that needs a connection waits for one."""
    global _pool
    if _pool is None:
        pool = create_pool(get_settings())
        await pool.open(wait=False)
        _pool = pool


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        pool, _pool = _pool, None
        await pool.close()


def pool() -> AsyncConnectionPool[Connection]:
    if _pool is None:
        raise RuntimeError("the connection pool is not open (dbpatterns.service.db.open_pool)")
    return _pool


@asynccontextmanager
async def connection() -> AsyncIterator[Connection]:
    """A pooled connection in autocommit mode: every statement commits on its own."""
    async with pool().connection() as conn:
        yield conn


@asynccontextmanager
async def transaction() -> AsyncIterator[Connection]:
    """A pooled connection inside BEGIN ... COMMIT; an exception out of the block rolls back."""
    async with pool().connection() as conn, conn.transaction():
        yield conn


async def fetch_one(
    conn: Connection, query: str, params: Sequence[Any] | Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """Run ``query`` with bound ``params``; its first row, or None when it returned none."""
    cursor = await conn.execute(query, params)
    return await cursor.fetchone()
