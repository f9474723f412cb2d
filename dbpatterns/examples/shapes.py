"""shapes: the library used the ways users' handlers use it, on an account table of its own.

A service built only on ``dbpatterns.exactly_once``, which the lab's tests and its chaos suite
drive with faults: the shapes the lab's one-call credit handlers never take.

* ``shapes/depositTwice``, ``shapes/prepareTwice``: two calls of a pattern in one invocation,
  one after the other;
* ``shapes/depositTogether``, ``shapes/prepareTogether``: two calls at once
  (``asyncio.gather``);
* ``shapes/depositNothing``, ``shapes/prepareMaybe``: a work whose result is ``None`` (and an
  optional result type);
* ``shapes/depositSerializable``: an idempotent transaction at SERIALIZABLE (its work checks
  the level it runs at);
* ``shapes/depositBounded``: an idempotent transaction whose step is tried at most 3 times
  (``Retry``), then the call fails and writes nothing;
* tables and gid prefix of its own: ``shapes_tokens``, ``shapes_prepared_results``,
  ``shapes-2pc:``;
* ``shapesBrief/deposit``: a second service on the same token table with a TTL of seconds,
  beside ``shapes``' day: each token expires by its own (and a brief TTL is a brief deadline: a
  call of ``shapesBrief`` commits within 4 s of its start, or fails and writes nothing);
* ``shapesAccount/<id>/deposit``: a versioned update, its write marking the row
  (``written_by``); and ``shapesAccount/<id>/depositUnchecked``, a NEGATIVE CONTROL, a user's
  mistake kept on purpose (do not copy it): its write returns the state it meant to write
  without looking at whether its UPDATE matched a row, so when a deposit from outside the
  object moved the version between its read and its write, it answers 200 for a deposit that
  is not there, and the chaos suite's ledger must catch the lost update.

A deposit adds ``amount`` to ``shapes_accounts.balance``, bumps ``version`` and appends a row
to ``shapes_entries``, in one transaction. Every answer is ``{"balance": <after the last
deposit, or null>, "calls": [<call id>, ...]}``. A malformed request is a 400, an unknown
account a 404; neither changes anything.

    curl localhost:8080/shapes/depositTwice -H 'content-type: application/json' \\
        -H 'idempotency-key: twice-1' -d '{"accountId": "A-1", "amount": 5}'

The host provides the connection pool (``use_pool``) when it starts: the lab's service hands it
its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Annotated, Any

import psycopg
import restate
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

from dbpatterns.exactly_once import (
    Done,
    IdempotencyTokens,
    Retry,
    idempotent_transaction,
    prepared_transaction,
    versioned_update,
)

shapes = restate.Service("shapes")
shapes_brief = restate.Service("shapesBrief")
account = restate.VirtualObject("shapesAccount")

TOKENS_TABLE = "shapes_tokens"
RESULTS_TABLE = "shapes_prepared_results"
GID_PREFIX = "shapes-2pc:"
#: ``shapes``' tokens: a day. ``shapesBrief``'s, on the same table: seconds.
TTL = timedelta(days=1)
BRIEF_TTL = timedelta(seconds=4)

_pool: AsyncConnectionPool[Any] | None = None


def use_pool(pool: AsyncConnectionPool[Any] | None) -> None:
    """The pool the handlers use: opened by the host before the first call."""
    global _pool
    _pool = pool


def pool() -> AsyncConnectionPool[Any]:
    if _pool is None:
        raise RuntimeError("shapes: no connection pool yet (shapes.use_pool)")
    return _pool


TOKENS = IdempotencyTokens(shapes, pool=pool, ttl=TTL, table=TOKENS_TABLE)
BRIEF_TOKENS = IdempotencyTokens(shapes_brief, pool=pool, ttl=BRIEF_TTL, table=TOKENS_TABLE)

# --- requests and answers ----------------------------------------------------------------------

AccountId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
Amount = Annotated[int, Field(strict=True, ge=1, le=1_000_000_000)]


class Deposit(BaseModel):
    """``{"accountId", "amount"}``"""

    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", strict=True, frozen=True, validate_by_name=False
    )

    account_id: AccountId
    amount: Amount


class Row(BaseModel):
    """An account as a versioned update reads it: balance, version and the last writer's mark."""

    balance: int
    version: int
    written_by: str | None = None


class Deposited(BaseModel):
    """The balance after the last deposit (null when the work returned none), and the id of each
    call the handler made."""

    balance: int | None
    calls: list[str]


def parse_deposit(body: bytes) -> Deposit:
    try:
        return Deposit.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise bad_request("deposit", exc) from None


_AMOUNT: TypeAdapter[int] = TypeAdapter(Amount)


def parse_amount(body: bytes) -> int:
    try:
        return _AMOUNT.validate_json(body or b"null")
    except ValidationError as exc:
        raise bad_request("amount", exc) from None


def bad_request(what: str, exc: ValidationError) -> restate.TerminalError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return restate.TerminalError(f"invalid {what}: {problems}", 400)


def not_found(account_id: str) -> restate.TerminalError:
    return restate.TerminalError(f"account {account_id!r} not found", 404)


def answer(*done: Done[Any]) -> Deposited:
    """The last call's balance (an ``int``, a ``Row`` or ``None``), every call's id."""
    last = done[-1].result
    balance = last.balance if isinstance(last, Row) else last
    return Deposited(balance=balance, calls=[d.call_id for d in done])


# --- the database ------------------------------------------------------------------------------

Connection = psycopg.AsyncConnection[Any]

ADD = """
    UPDATE shapes_accounts SET balance = balance + %(amount)s, version = version + 1
    WHERE account_id = %(account_id)s RETURNING balance
"""
LOG = "INSERT INTO shapes_entries (account_id, amount) VALUES (%s, %s)"
READ = "SELECT balance, version, written_by FROM shapes_accounts WHERE account_id = %s"
SET_IF_VERSION = """
    UPDATE shapes_accounts SET balance = %(balance)s, version = %(version)s, written_by = %(mark)s
    WHERE account_id = %(account_id)s AND version = %(seen)s
    RETURNING balance, version, written_by
"""


async def deposit(conn: Connection, req: Deposit) -> int:
    """Add the amount and log it: NOT idempotent, run inside the caller's transaction."""
    row = await (await conn.execute(ADD, req.model_dump())).fetchone()
    if row is None:
        raise not_found(req.account_id)
    await conn.execute(LOG, (req.account_id, req.amount))
    return int(row[0])


async def read_row(conn: Connection, account_id: str) -> Row:
    row = await (await conn.execute(READ, (account_id,))).fetchone()
    if row is None:
        raise not_found(account_id)
    return Row(balance=row[0], version=row[1], written_by=row[2])


# --- two calls in one invocation ---------------------------------------------------------------


def _once(ctx: restate.Context, req: Deposit, step: str) -> Coroutine[Any, Any, Done[int]]:
    return idempotent_transaction(
        ctx,
        pool(),
        lambda conn: deposit(conn, req),
        tokens=TOKENS,
        result_type=int,
        step=step,
    )


def _prepared(ctx: restate.Context, req: Deposit, step: str) -> Coroutine[Any, Any, Done[int]]:
    return prepared_transaction(
        ctx,
        pool(),
        lambda conn: deposit(conn, req),
        result_type=int,
        results_table=RESULTS_TABLE,
        gid_prefix=GID_PREFIX,
        prepare_step=step,
    )


@shapes.handler(name="depositTwice", input_serde=BytesSerde())
async def deposit_twice(ctx: restate.Context, body: bytes) -> Deposited:
    """Two idempotent transactions, one after the other: the amount twice."""
    req = parse_deposit(body)
    first = await _once(ctx, req, "first deposit")
    second = await _once(ctx, req, "second deposit")
    return answer(first, second)


@shapes.handler(name="depositTogether", input_serde=BytesSerde())
async def deposit_together(ctx: restate.Context, body: bytes) -> Deposited:
    """Two idempotent transactions at once: the amount twice."""
    req = parse_deposit(body)
    done = await asyncio.gather(_once(ctx, req, "deposit a"), _once(ctx, req, "deposit b"))
    return answer(*sorted(done, key=lambda d: d.result))


@shapes.handler(name="prepareTwice", input_serde=BytesSerde())
async def prepare_twice(ctx: restate.Context, body: bytes) -> Deposited:
    """Two prepared transactions, one after the other: the amount twice."""
    req = parse_deposit(body)
    first = await _prepared(ctx, req, "first deposit, PREPARE")
    second = await _prepared(ctx, req, "second deposit, PREPARE")
    return answer(first, second)


@shapes.handler(name="prepareTogether", input_serde=BytesSerde())
async def prepare_together(ctx: restate.Context, body: bytes) -> Deposited:
    """Two prepared transactions at once: the amount twice."""
    req = parse_deposit(body)
    done = await asyncio.gather(
        _prepared(ctx, req, "deposit a, PREPARE"), _prepared(ctx, req, "deposit b, PREPARE")
    )
    return answer(*sorted(done, key=lambda d: d.result))


# --- results that are None ---------------------------------------------------------------------


@shapes.handler(name="depositNothing", input_serde=BytesSerde())
async def deposit_nothing(ctx: restate.Context, body: bytes) -> Deposited:
    """An idempotent transaction whose work returns None."""
    req = parse_deposit(body)

    async def deposit_quietly(conn: Connection) -> None:
        await deposit(conn, req)

    done = await idempotent_transaction(
        ctx, pool(), deposit_quietly, tokens=TOKENS, result_type=type(None), step="deposit"
    )
    return answer(done)


@shapes.handler(name="prepareMaybe", input_serde=BytesSerde())
async def prepare_maybe(ctx: restate.Context, body: bytes) -> Deposited:
    """A prepared transaction whose optional result is None."""
    req = parse_deposit(body)

    async def deposit_quietly(conn: Connection) -> int | None:
        await deposit(conn, req)
        return None

    done = await prepared_transaction(
        ctx,
        pool(),
        deposit_quietly,
        result_type=int | None,
        results_table=RESULTS_TABLE,
        gid_prefix=GID_PREFIX,
    )
    return answer(done)


# --- an isolation level, and a second service on the same token table --------------------------


@shapes.handler(name="depositSerializable", input_serde=BytesSerde())
async def deposit_serializable(ctx: restate.Context, body: bytes) -> Deposited:
    """An idempotent transaction at SERIALIZABLE."""
    req = parse_deposit(body)

    async def deposit_serializably(conn: Connection) -> int:
        level = await (await conn.execute("SHOW transaction_isolation")).fetchone()
        if level is None or level[0] != "serializable":
            raise restate.TerminalError(f"the transaction runs at {level}, not serializable", 500)
        return await deposit(conn, req)

    done = await idempotent_transaction(
        ctx,
        pool(),
        deposit_serializably,
        tokens=TOKENS,
        result_type=int,
        isolation=psycopg.IsolationLevel.SERIALIZABLE,
    )
    return answer(done)


#: How often ``depositBounded`` tries its step before the call fails.
BOUNDED_ATTEMPTS = 3


@shapes.handler(name="depositBounded", input_serde=BytesSerde())
async def deposit_bounded(ctx: restate.Context, body: bytes) -> Deposited:
    """An idempotent transaction tried at most ``BOUNDED_ATTEMPTS`` times."""
    req = parse_deposit(body)
    done = await idempotent_transaction(
        ctx,
        pool(),
        lambda conn: deposit(conn, req),
        tokens=TOKENS,
        result_type=int,
        retry=Retry(max_attempts=BOUNDED_ATTEMPTS),
    )
    return answer(done)


@shapes_brief.handler(name="deposit", input_serde=BytesSerde())
async def deposit_briefly(ctx: restate.Context, body: bytes) -> Deposited:
    """An idempotent transaction whose token lives seconds, beside ``shapes``' day-long ones."""
    req = parse_deposit(body)
    done = await idempotent_transaction(
        ctx, pool(), lambda conn: deposit(conn, req), tokens=BRIEF_TOKENS, result_type=int
    )
    return answer(done)


# --- a versioned update, and its negative control ----------------------------------------------

_KEY: TypeAdapter[str] = TypeAdapter(AccountId)


def account_key(ctx: restate.ObjectContext) -> str:
    try:
        return _KEY.validate_python(ctx.key())
    except ValidationError:
        raise restate.TerminalError(
            f"the object key {ctx.key()!r} is not an account id: use 1-64 letters, digits or "
            "_ . : -",
            400,
        ) from None


async def _versioned(ctx: restate.ObjectContext, body: bytes, checked: bool) -> Deposited:
    account_id = account_key(ctx)
    amount = parse_amount(body)

    async def write(conn: Connection, seen: Row, mark: str) -> Row | None:
        params = {
            "account_id": account_id,
            "balance": seen.balance + amount,
            "version": seen.version + 1,
            "seen": seen.version,
            "mark": mark,
        }
        async with conn.transaction():  # two statements: one transaction on any pool
            row = await (await conn.execute(SET_IF_VERSION, params)).fetchone()
            if row is None:
                if checked:
                    return None
                # The mistake: answer with the state it meant to write, written or not.
                return Row(balance=seen.balance + amount, version=seen.version + 1, written_by=mark)
            await conn.execute(LOG, (account_id, amount))
        return Row(balance=row[0], version=row[1], written_by=row[2])

    done = await versioned_update(
        ctx,
        pool(),
        read=lambda conn: read_row(conn, account_id),
        write=write,
        state_type=Row,
        read_step="read account",
        write_step="deposit if version unchanged",
    )
    return answer(done)


@account.handler(name="deposit", input_serde=BytesSerde())
async def deposit_through_object(ctx: restate.ObjectContext, body: bytes) -> Deposited:
    """A versioned deposit: a journaled read, then a write conditioned on the version read."""
    return await _versioned(ctx, body, checked=True)


@account.handler(name="depositUnchecked", input_serde=BytesSerde())
async def deposit_unchecked(ctx: restate.ObjectContext, body: bytes) -> Deposited:
    """NEGATIVE CONTROL, do not copy: the write does not look at whether its UPDATE matched."""
    return await _versioned(ctx, body, checked=False)
