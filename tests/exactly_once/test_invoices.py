"""The library, proven through the example service that uses nothing else (``invoices``): each
of its three patterns records a payment once per call across a retry after the commit, a
failure before it, a repeated call; and refuses bad input, unknown invoices and overpayments
without changing anything."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dbpatterns.client import Ingress
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import assert_quiet


@dataclass(frozen=True)
class Payer:
    """One of the example's payment handlers, and its fault points."""

    name: str  # as the failpoints know it
    service: str
    handler: str
    keyed: bool
    before_commit: str  # a point where the transaction is open: a failure rolls it back
    #: What ``recorded`` says after a retry that followed the commit (the 2PC retry commits the
    #: one prepared transaction itself, so it recorded it; the others find it done).
    recorded_after_retry: bool

    def pay(self, ingress: Ingress, invoice: str, amount: int, **kw: Any) -> httpx.Response:
        if self.keyed:
            return ingress.call(self.service, self.handler, amount, key=invoice, **kw)
        body = {"invoiceId": invoice, "amount": amount}
        return ingress.call(self.service, self.handler, body, **kw)


PAYERS = [
    Payer("invoices.pay", "invoices", "pay", False, "before-commit", False),
    Payer("invoices.payTwoPhase", "invoices", "payTwoPhase", False, "before-prepare", True),
    Payer("invoice.pay", "invoice", "pay", True, "before-write", False),
]
by_name = pytest.mark.parametrize("payer", PAYERS, ids=[p.name for p in PAYERS])


@pytest.fixture
def new_invoice(db: psycopg.Connection[Any]) -> Callable[..., str]:
    def make(amount_due: int = 1000) -> str:
        invoice_id = f"INV-{uuid.uuid4().hex[:12]}"
        db.execute(
            "INSERT INTO invoices (invoice_id, amount_due) VALUES (%s, %s)",
            (invoice_id, amount_due),
        )
        return invoice_id

    return make


def ledger(db: psycopg.Connection[Any], invoice: str) -> tuple[int, int, list[int]]:
    """``(paid, version, [amount of each logged payment])`` of an invoice."""
    row = db.execute(
        "SELECT paid, version FROM invoices WHERE invoice_id = %s", (invoice,)
    ).fetchone()
    assert row is not None
    logged = db.execute(
        "SELECT amount FROM invoice_payments WHERE invoice_id = %s ORDER BY payment_id", (invoice,)
    ).fetchall()
    return int(row[0]), int(row[1]), [int(r[0]) for r in logged]


@by_name
def test_a_payment_is_recorded_once_and_answered_with_the_invoice(
    payer: Payer, ingress: Ingress, db: psycopg.Connection[Any], new_invoice: Callable[..., str]
) -> None:
    invoice = new_invoice(amount_due=500)
    response = payer.pay(ingress, invoice, 120)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "recorded": True,
        "invoice": {"invoiceId": invoice, "amountDue": 500, "paid": 120, "version": 1},
    }
    assert ledger(db, invoice) == (120, 1, [120])
    assert_quiet(db)


@by_name
def test_a_retry_after_the_commit_records_the_payment_once(
    payer: Payer,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_invoice: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """The step fails right after its transaction committed; Restate retries it. The retry
    finds the payment in (token, version, or the committed prepared transaction) and records
    nothing more; the answer is the invoice as the payment left it."""
    invoice = new_invoice(amount_due=500)
    point = f"{payer.name}.after-commit"
    failpoint(point, "1*error")
    response = payer.pay(ingress, invoice, 70)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] is payer.recorded_after_retry
    assert response.json()["invoice"]["paid"] == 70
    assert ledger(db, invoice) == (70, 1, [70])
    assert_quiet(db)


@by_name
def test_a_failure_before_the_commit_leaves_nothing_and_the_retry_records_once(
    payer: Payer,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_invoice: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    invoice = new_invoice(amount_due=500)
    point = f"{payer.name}.{payer.before_commit}"
    failpoint(point, "1*error")
    response = payer.pay(ingress, invoice, 30)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] is True
    assert ledger(db, invoice) == (30, 1, [30])
    assert_quiet(db)


@by_name
def test_a_repeated_call_with_its_idempotency_key_records_nothing_more(
    payer: Payer, ingress: Ingress, db: psycopg.Connection[Any], new_invoice: Callable[..., str]
) -> None:
    invoice = new_invoice(amount_due=500)
    key = f"pay-{uuid.uuid4()}"
    first = payer.pay(ingress, invoice, 40, idempotency_key=key)
    again = payer.pay(ingress, invoice, 40, idempotency_key=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()
    assert ledger(db, invoice) == (40, 1, [40])


@by_name
def test_an_overpayment_is_refused_with_409_and_changes_nothing(
    payer: Payer, ingress: Ingress, db: psycopg.Connection[Any], new_invoice: Callable[..., str]
) -> None:
    invoice = new_invoice(amount_due=100)
    assert payer.pay(ingress, invoice, 60).status_code == 200
    response = payer.pay(ingress, invoice, 41)
    assert response.status_code == 409, response.text
    assert "invoices_not_overpaid" in response.text
    assert ledger(db, invoice) == (60, 1, [60])
    assert_quiet(db)


@by_name
def test_an_unknown_invoice_is_404_and_leaves_no_token_or_transaction(
    payer: Payer, ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    before = db.execute("SELECT count(*) FROM exactly_once_tokens").fetchone()
    response = payer.pay(ingress, f"INV-missing-{uuid.uuid4().hex[:8]}", 5)
    assert response.status_code == 404, response.text
    assert "not found" in response.text
    assert db.execute("SELECT count(*) FROM exactly_once_tokens").fetchone() == before
    assert_quiet(db)


BAD_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not JSON", b"{"),
    ("amount as a string", b'{"invoiceId": "INV-1", "amount": "5"}'),
    ("amount zero", b'{"invoiceId": "INV-1", "amount": 0}'),
    ("snake_case field", b'{"invoice_id": "INV-1", "amount": 5}'),
    ("unknown field", b'{"invoiceId": "INV-1", "amount": 5, "extra": 1}'),
    ("bad invoice id", b'{"invoiceId": "INV 1; DROP", "amount": 5}'),
]


@pytest.mark.parametrize(("what", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
@pytest.mark.parametrize("handler", ["pay", "payTwoPhase", "create"])
def test_a_malformed_request_is_a_400_that_says_why(
    handler: str, what: str, body: bytes, ingress: Ingress
) -> None:
    response = ingress.call("invoices", handler, raw_body=body)
    assert response.status_code == 400, (what, response.text)
    # The handler names the problem; an empty body is refused by Restate's ingress first.
    assert "invalid" in response.text or "Empty body not allowed" in response.text


@pytest.mark.parametrize(("key", "body"), [("INV-1", b'"5"'), ("INV-1", b"-1"), ("a b", b"5")])
def test_the_objects_bad_key_or_amount_is_a_400(key: str, body: bytes, ingress: Ingress) -> None:
    response = ingress.call("invoice", "pay", key=key, raw_body=body)
    assert response.status_code == 400, response.text


def test_the_token_expiry_is_private(ingress: Ingress) -> None:
    """Only Restate calls it: deleting a live token early would let a zombie pay again."""
    response = ingress.call("invoices", "expireToken", str(uuid.uuid4()))
    assert response.status_code == 400, response.text
    assert "not public" in response.text
