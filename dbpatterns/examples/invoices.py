"""invoices: record a payment against an invoice, exactly once, three ways.

A service built only on ``dbpatterns.exactly_once``, as any user of the library would write
one: it owns its tables (``invoices``, ``invoice_payments``), its request and response models,
and its input checks; the library owns the exactly-once part. Recording a payment adds the
amount to ``invoices.paid``, bumps ``invoices.version`` and appends a row to
``invoice_payments``, all in one transaction. Run twice, it would record the payment twice;
each handler makes it happen once per call:

* ``invoices/pay`` (``idempotent_transaction``): the payment and the invocation's token commit
  together; a retry finds the token and answers with the recorded result. Correct whoever else
  writes the invoice.
* ``invoices/payTwoPhase`` (``prepared_transaction``): the payment is PREPAREd in one durable
  step and committed in the next; a failure or a cancellation rolls it back.
* ``invoice/<id>/pay`` (``versioned_update``, a virtual object keyed by invoice): a journaled
  read of ``(paid, version)``, then a write conditioned on that version, which marks the row
  with the call (``written_by``). Correct as long as every payment of the invoice goes through
  this object; a payment that lost the row to another writer fails with 409 instead.

Each answers with the invoice after the payment, as committed, and the payment's id (the call id
the library records it under: its token, its prepared transaction, the invoice's mark).

An unknown invoice is a 404, a payment beyond the amount due a 409 (the table's check
constraint refuses it), a malformed request a 400: none of them changes anything.

    curl localhost:8080/invoices/create -H 'content-type: application/json' \\
        -d '{"invoiceId": "INV-1", "amountDue": 500}'
    curl localhost:8080/invoices/pay -H 'content-type: application/json' \\
        -H 'idempotency-key: pay-INV-1-1' -d '{"invoiceId": "INV-1", "amount": 120}'

The host provides the connection pool (``use_pool``) when it starts: the lab's service hands it
its own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, TypeVar

import psycopg
import restate
from psycopg_pool import AsyncConnectionPool
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

from dbpatterns.exactly_once import (
    IdempotencyTokens,
    database_errors,
    idempotent_transaction,
    prepared_transaction,
    versioned_update,
)

M = TypeVar("M", bound=BaseModel)

invoices = restate.Service("invoices")
invoice = restate.VirtualObject("invoice")

#: How long a payment's token is kept (it must outlive any attempt of the call by far).
TOKEN_TTL = timedelta(days=1)

_pool: AsyncConnectionPool[Any] | None = None


def use_pool(pool: AsyncConnectionPool[Any] | None) -> None:
    """The pool the handlers use: opened by the host before the first call."""
    global _pool
    _pool = pool


def pool() -> AsyncConnectionPool[Any]:
    if _pool is None:
        raise RuntimeError("invoices: no connection pool yet (invoices.use_pool)")
    return _pool


TOKENS = IdempotencyTokens(invoices, pool=pool, ttl=TOKEN_TTL, expiry_handler="expireToken")


# --- requests and answers ----------------------------------------------------------------------

InvoiceId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
Amount = Annotated[int, Field(strict=True, ge=1, le=1_000_000_000)]


class _Body(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", strict=True, frozen=True, validate_by_name=False
    )


class NewInvoice(_Body):
    """``{"invoiceId", "amountDue"}``"""

    invoice_id: InvoiceId
    amount_due: Amount


class PaymentRequest(_Body):
    """``{"invoiceId", "amount"}``"""

    invoice_id: InvoiceId
    amount: Amount


#: Answers: built in Python by attribute name, sent (and journaled) as camelCase JSON.
_ANSWER = ConfigDict(
    alias_generator=to_camel, serialize_by_alias=True, validate_by_name=True, validate_by_alias=True
)


class Invoice(BaseModel):
    """An invoice after a payment: what is paid, what is still due, its count of payments, and
    the mark of the payment through the object that wrote it last (``written_by``)."""

    model_config = _ANSWER

    invoice_id: str
    amount_due: int
    paid: int
    version: int
    written_by: str | None = None


class Paid(BaseModel):
    """The invoice after the payment, as committed, and the payment's id."""

    model_config = _ANSWER

    invoice: Invoice
    payment: str


class Created(BaseModel):
    created: bool


def parse(model: type[M], body: bytes) -> M:
    """The request body as ``model``, or a 400 that says what is wrong (nothing is written)."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise bad_request(model.__name__, exc) from None


_AMOUNT: TypeAdapter[int] = TypeAdapter(Amount)


def parse_amount(body: bytes) -> int:
    """A bare amount as the body (``120``), or a 400."""
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


def invoice_not_found(invoice_id: str) -> restate.TerminalError:
    return restate.TerminalError(
        f"invoice {invoice_id!r} not found; create it with invoices/create first", 404
    )


# --- the database ------------------------------------------------------------------------------

CREATE = """
    INSERT INTO invoices (invoice_id, amount_due) VALUES (%s, %s)
    ON CONFLICT (invoice_id) DO NOTHING RETURNING invoice_id
"""
SELECT = """
    SELECT invoice_id, amount_due, paid, version, written_by FROM invoices WHERE invoice_id = %s
"""
ADD_PAYMENT = """
    UPDATE invoices SET paid = paid + %(amount)s, version = version + 1
    WHERE invoice_id = %(invoice_id)s
    RETURNING invoice_id, amount_due, paid, version, written_by
"""
SET_PAID_IF_VERSION = """
    UPDATE invoices SET paid = %(paid)s, version = %(version)s, written_by = %(mark)s
    WHERE invoice_id = %(invoice_id)s AND version = %(seen_version)s
    RETURNING invoice_id, amount_due, paid, version, written_by
"""
LOG_PAYMENT = "INSERT INTO invoice_payments (invoice_id, amount) VALUES (%s, %s)"

Connection = psycopg.AsyncConnection[Any]


def _invoice(row: tuple[Any, ...]) -> Invoice:
    return Invoice(
        invoice_id=row[0], amount_due=row[1], paid=row[2], version=row[3], written_by=row[4]
    )


async def fetch(conn: Connection, invoice_id: str) -> Invoice:
    row = await (await conn.execute(SELECT, (invoice_id,))).fetchone()
    if row is None:
        raise invoice_not_found(invoice_id)
    return _invoice(row)


async def record_payment(conn: Connection, invoice_id: str, amount: int) -> Invoice:
    """Add the payment and log it: NOT idempotent, run inside the caller's transaction."""
    params = {"invoice_id": invoice_id, "amount": amount}
    row = await (await conn.execute(ADD_PAYMENT, params)).fetchone()
    if row is None:
        raise invoice_not_found(invoice_id)
    await conn.execute(LOG_PAYMENT, (invoice_id, amount))
    return _invoice(row)


# --- the handlers ------------------------------------------------------------------------------


@invoices.handler(name="create", input_serde=BytesSerde())
async def create(ctx: restate.Context, body: bytes) -> Created:
    """Create an invoice unless one with this id exists (a repeat changes nothing)."""
    req = parse(NewInvoice, body)
    async with database_errors(f"creating invoice {req.invoice_id!r}"), pool().connection() as c:
        row = await (await c.execute(CREATE, (req.invoice_id, req.amount_due))).fetchone()
    return Created(created=row is not None)


@invoices.handler(name="pay", input_serde=BytesSerde())
async def pay(ctx: restate.Context, body: bytes) -> Paid:
    """Record a payment exactly once: in one transaction with the call's token."""
    req = parse(PaymentRequest, body)
    done = await idempotent_transaction(
        ctx,
        pool(),
        lambda conn: record_payment(conn, req.invoice_id, req.amount),
        tokens=TOKENS,
        result_type=Invoice,
        step="record payment",
    )
    return Paid(invoice=done.result, payment=done.call_id)


@invoices.handler(name="payTwoPhase", input_serde=BytesSerde())
async def pay_two_phase(ctx: restate.Context, body: bytes) -> Paid:
    """Record a payment exactly once, or not at all: PREPARE, then COMMIT PREPARED."""
    req = parse(PaymentRequest, body)
    done = await prepared_transaction(
        ctx,
        pool(),
        lambda conn: record_payment(conn, req.invoice_id, req.amount),
        result_type=Invoice,
        prepare_step="record payment, PREPARE TRANSACTION",
    )
    return Paid(invoice=done.result, payment=done.call_id)


_KEY = TypeAdapter(InvoiceId)


def invoice_key(ctx: restate.ObjectContext | restate.ObjectSharedContext) -> str:
    """The object key, which must be a valid invoice id (400 otherwise)."""
    try:
        return _KEY.validate_python(ctx.key())
    except ValidationError:
        raise restate.TerminalError(
            f"the object key {ctx.key()!r} is not an invoice id: use 1-64 letters, digits or "
            "_ . : -",
            400,
        ) from None


@invoice.handler(name="pay", input_serde=BytesSerde())
async def pay_through_object(ctx: restate.ObjectContext, body: bytes) -> Paid:
    """Record a payment exactly once, through the invoice's object: a journaled read, then a
    write conditioned on the version read."""
    invoice_id = invoice_key(ctx)
    amount = parse_amount(body)

    async def write_if_unchanged(conn: Connection, seen: Invoice, mark: str) -> Invoice | None:
        params = {
            "invoice_id": invoice_id,
            "paid": seen.paid + amount,
            "version": seen.version + 1,
            "mark": mark,
            "seen_version": seen.version,
        }
        async with conn.transaction():  # two statements: one transaction on any pool
            row = await (await conn.execute(SET_PAID_IF_VERSION, params)).fetchone()
            if row is None:
                return None
            await conn.execute(LOG_PAYMENT, (invoice_id, amount))
        return _invoice(row)

    done = await versioned_update(
        ctx,
        pool(),
        read=lambda conn: fetch(conn, invoice_id),
        write=write_if_unchanged,
        state_type=Invoice,
        read_step="read invoice",
        write_step="record payment if version unchanged",
    )
    return Paid(invoice=done.result, payment=done.call_id)


@invoice.handler(name="get", kind="shared")
async def get(ctx: restate.ObjectSharedContext) -> Invoice:
    """The invoice now (a plain read, not journaled)."""
    invoice_id = invoice_key(ctx)
    async with database_errors(f"reading invoice {invoice_id!r}"), pool().connection() as conn:
        return await fetch(conn, invoice_id)
