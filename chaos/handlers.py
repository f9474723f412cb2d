"""The handlers the chaos table calls, and the tables they add to.

A credit handler adds a known amount to one row per call; its ``LedgerTable`` says which
table, which columns hold the running total and the count of writes, and which log (if any)
records each write in the same transaction: what the checker (``chaos.checker``) reads back
per operation. The lab's four credit handlers, the invoices example's three, and the shapes
example's (the library used as users' handlers use it), each with the lab handler built on the
same library pattern (``SAME_PATTERN_AS``): the same fault points, the same expectation at each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from dbpatterns.stack.client import Ingress


@dataclass(frozen=True)
class LedgerTable:
    """The table a handler adds to: one row per user of a cell, with the running total
    (``amount``) and its count of writes (``version``); and, where the handler logs each write
    in the same transaction, that log (``log``: table, key column, amount column)."""

    table: str
    key: str
    amount: str
    version: str = "version"
    log: tuple[str, str, str] | None = None

    def create(self, conn: psycopg.Connection[Any], keys: list[str], initial: int) -> None:
        with conn.cursor() as cur:
            if self.table == "users":
                cur.executemany(
                    "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s)",
                    [(k, "Chaos User", "1 Fault Line", initial) for k in keys],
                )
            elif self.table == "invoices":  # an invoice, due far more than any cell pays
                cur.executemany(
                    "INSERT INTO invoices (invoice_id, amount_due, paid) VALUES (%s, %s, %s)",
                    [(k, 10**12, initial) for k in keys],
                )
            else:
                cur.executemany(
                    "INSERT INTO shapes_accounts (account_id, balance) VALUES (%s, %s)",
                    [(k, initial) for k in keys],
                )


#: The lab's services add credits to ``users``.
USERS = LedgerTable("users", "userid", "credits")
#: The example built on the library (``dbpatterns.examples.invoices``) adds payments to
#: ``invoices.paid`` and logs each one in ``invoice_payments``.
INVOICES = LedgerTable(
    "invoices", "invoice_id", "paid", log=("invoice_payments", "invoice_id", "amount")
)
#: The shapes example (``dbpatterns.examples.shapes``) deposits into ``shapes_accounts.balance``
#: and logs each deposit in ``shapes_entries``.
SHAPES = LedgerTable(
    "shapes_accounts", "account_id", "balance", log=("shapes_entries", "account_id", "amount")
)


@dataclass(frozen=True)
class CreditHandler:
    """A handler that adds an amount to a row, and how to call it. ``name`` prefixes its
    failpoints."""

    name: str
    service: str
    handler: str
    keyed: bool  # a virtual object keyed by the row's id, with the bare amount as body
    exactly_once: bool  # what the pattern promises under crashes and zombies
    ledger: LedgerTable = USERS
    #: The body's two fields: the row's id and the amount to add.
    fields: tuple[str, str] = ("userId", "addCredits")
    #: How many times one operation adds its amount: 2 for a handler that makes two calls of a
    #: pattern in one invocation (each adds the amount, each counts one write).
    applications: int = 1

    def request(self, user_id: str, delta: int) -> tuple[str | None, Any]:
        """(object key, body) of a call adding ``delta`` to ``user_id``'s row."""
        if self.keyed:
            return user_id, delta
        return None, {self.fields[0]: user_id, self.fields[1]: delta}

    def curl(self, user_id: str, delta: int, ingress: str = "http://localhost:8080") -> str:
        key, body = self.request(user_id, delta)
        path = Ingress.path(self.service, self.handler, key)
        data = json.dumps(body)
        return (
            f"curl -s {ingress}{path} -H 'content-type: application/json' "
            f"-H 'idempotency-key: chaos-1' -d '{data}'"
        )


KEYED_UPDATE = CreditHandler("keyed.update", "keyed", "update", keyed=True, exactly_once=False)
KEYED_UPDATE_CONDITIONAL = CreditHandler(
    "keyed.updateConditional", "keyed", "updateConditional", keyed=True, exactly_once=True
)
IDEMPOTENCY_UPDATE = CreditHandler(
    "idempotency.update", "idempotency", "update", keyed=False, exactly_once=True
)
TWO_PHASE_COMMIT_UPDATE = CreditHandler(
    "twoPhaseCommit.update", "twoPhaseCommit", "update", keyed=False, exactly_once=True
)
# The example service's handlers, one per library pattern.
INVOICES_PAY = CreditHandler(
    "invoices.pay", "invoices", "pay", False, True, INVOICES, ("invoiceId", "amount")
)
INVOICES_PAY_TWO_PHASE = CreditHandler(
    "invoices.payTwoPhase",
    "invoices",
    "payTwoPhase",
    False,
    True,
    INVOICES,
    ("invoiceId", "amount"),
)
INVOICE_PAY = CreditHandler("invoice.pay", "invoice", "pay", True, True, INVOICES)
EXAMPLE_HANDLERS = [INVOICES_PAY, INVOICES_PAY_TWO_PHASE, INVOICE_PAY]
#: The lab handler built on the same library pattern as each example handler: the same fault
#: points, the same expectation at each.
SAME_PATTERN_AS = {
    INVOICES_PAY.name: IDEMPOTENCY_UPDATE,
    INVOICES_PAY_TWO_PHASE.name: TWO_PHASE_COMMIT_UPDATE,
    INVOICE_PAY.name: KEYED_UPDATE_CONDITIONAL,
}

# The shapes example's handlers: the library used as users' handlers use it.
_DEPOSIT = ("accountId", "amount")


def _shape(name: str, applications: int = 1, exactly_once: bool = True) -> CreditHandler:
    service, handler = name.split(".")
    keyed = service == "shapesAccount"
    return CreditHandler(
        name, service, handler, keyed, exactly_once, SHAPES, _DEPOSIT, applications
    )


DEPOSIT_TWICE = _shape("shapes.depositTwice", 2)
DEPOSIT_TOGETHER = _shape("shapes.depositTogether", 2)
DEPOSIT_NOTHING = _shape("shapes.depositNothing")
DEPOSIT_SERIALIZABLE = _shape("shapes.depositSerializable")
PREPARE_TWICE = _shape("shapes.prepareTwice", 2)
PREPARE_TOGETHER = _shape("shapes.prepareTogether", 2)
PREPARE_MAYBE = _shape("shapes.prepareMaybe")
BRIEF_DEPOSIT = _shape("shapesBrief.deposit")
ACCOUNT_DEPOSIT = _shape("shapesAccount.deposit")
#: The negative control: a versioned write that forgets its version condition.
ACCOUNT_DEPOSIT_UNCHECKED = _shape("shapesAccount.depositUnchecked", exactly_once=False)
SHAPE_HANDLERS = [
    DEPOSIT_TWICE,
    DEPOSIT_TOGETHER,
    DEPOSIT_NOTHING,
    DEPOSIT_SERIALIZABLE,
    PREPARE_TWICE,
    PREPARE_TOGETHER,
    PREPARE_MAYBE,
    ACCOUNT_DEPOSIT,
]
SAME_PATTERN_AS.update(
    {h.name: IDEMPOTENCY_UPDATE for h in (*SHAPE_HANDLERS[:4], BRIEF_DEPOSIT)}
    | {h.name: TWO_PHASE_COMMIT_UPDATE for h in SHAPE_HANDLERS[4:7]}
    | {h.name: KEYED_UPDATE_CONDITIONAL for h in (ACCOUNT_DEPOSIT, ACCOUNT_DEPOSIT_UNCHECKED)}
)

CREDIT_HANDLERS = [
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    IDEMPOTENCY_UPDATE,
    TWO_PHASE_COMMIT_UPDATE,
]
EXACTLY_ONCE_HANDLERS = [h for h in CREDIT_HANDLERS if h.exactly_once]
