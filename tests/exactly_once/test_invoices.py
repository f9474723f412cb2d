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

from dbpatterns.exactly_once.calls import CALL_ID, invocation_of_call
from dbpatterns.exactly_once.gids import gid_for
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.client import Ingress
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import assert_quiet, service_log_lines


@dataclass(frozen=True)
class Payer:
    """One of the example's payment handlers, and its fault points."""

    name: str  # as the failpoints know it
    service: str
    handler: str
    keyed: bool
    before_commit: str  # a point where the transaction is open: a failure rolls it back
    #: The service's log line, for a payment id, of an attempt that finds the payment already in
    #: (its token, its mark on the invoice) and records nothing; None: the 2PC retry after the
    #: commit finds its gid gone and the result row there, and logs nothing of it.
    found_done: str | None

    def pay(self, ingress: Ingress, invoice: str, amount: int, **kw: Any) -> httpx.Response:
        if self.keyed:
            return ingress.call(self.service, self.handler, amount, key=invoice, **kw)
        body = {"invoiceId": invoice, "amount": amount}
        return ingress.call(self.service, self.handler, body, **kw)


PAYERS = [
    Payer("invoices.pay", "invoices", "pay", False, "before-commit", "token {} already recorded"),
    Payer("invoices.payTwoPhase", "invoices", "payTwoPhase", False, "before-prepare", None),
    Payer("invoice.pay", "invoice", "pay", True, "before-write", "mark is this call's ({})"),
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


def payment_of(response: httpx.Response) -> str:
    """The payment id a successful call answered with: its call id, naming its invocation."""
    payment = str(response.json()["payment"])
    assert CALL_ID.fullmatch(payment), payment
    assert invocation_of_call(payment) == response.headers["x-restate-id"], payment
    return payment


def recorded_under(db: psycopg.Connection[Any], payer: Payer, payment: str) -> bool:
    """Is the payment recorded in the database under its id: a committed token, a committed
    prepared transaction's result row, or the invoice's mark?"""
    if payer.keyed:
        query, key = "SELECT 1 FROM invoices WHERE written_by = %s", payment
    elif payer.handler == "pay":
        query = "SELECT 1 FROM exactly_once_tokens WHERE id = %s AND outcome = 'committed'"
        key = payment
    else:
        query, key = "SELECT 1 FROM exactly_once_prepared_results WHERE gid = %s", gid_for(payment)
    return db.execute(query, (key,)).fetchone() is not None


def commits_logged(service: ServiceProcess, payment: str) -> int:
    """How many COMMIT PREPARED of the payment's transaction went through."""
    return len(service_log_lines(service, f"{gid_for(payment)} committed (xid"))


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
    payment = payment_of(response)
    # Only the object's write marks the invoice (with the payment's id).
    mark = payment if payer.keyed else None
    assert response.json() == {
        "invoice": {
            "invoiceId": invoice,
            "amountDue": 500,
            "paid": 120,
            "version": 1,
            "writtenBy": mark,
        },
        "payment": payment,
    }
    assert recorded_under(db, payer, payment)
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
    service: ServiceProcess,
) -> None:
    """The step fails right after its transaction committed; Restate retries it. The retry
    finds the payment in (its token, its mark on the invoice, or its prepared transaction gone
    and the result row there) and records nothing more; the answer is the invoice as the
    payment left it."""
    invoice = new_invoice(amount_due=500)
    point = f"{payer.name}.after-commit"
    failpoint(point, "1*error")
    response = payer.pay(ingress, invoice, 70)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    payment = payment_of(response)
    assert response.json()["invoice"]["paid"] == 70
    if payer.found_done is not None:
        assert len(service_log_lines(service, payer.found_done.format(payment))) == 1
    else:
        assert commits_logged(service, payment) == 1  # the first attempt's; the retry's found none
    assert recorded_under(db, payer, payment)
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
    service: ServiceProcess,
) -> None:
    """Nothing of the failed attempt stays; the retry records the payment itself, once."""
    invoice = new_invoice(amount_due=500)
    point = f"{payer.name}.{payer.before_commit}"
    failpoint(point, "1*error")
    response = payer.pay(ingress, invoice, 30)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    payment = payment_of(response)
    assert response.json()["invoice"]["paid"] == 30
    if payer.found_done is not None:
        assert service_log_lines(service, payer.found_done.format(payment)) == []
    else:
        assert commits_logged(service, payment) == 1
    assert recorded_under(db, payer, payment)
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
def test_an_unknown_invoice_is_404_and_leaves_no_committed_token_or_transaction(
    payer: Payer, ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    """``invoices.pay`` marks its call's token ``failed`` (no late attempt may pay); the others
    take no token at all."""
    since = db.execute("SELECT clock_timestamp()").fetchone()
    assert since is not None
    response = payer.pay(ingress, f"INV-missing-{uuid.uuid4().hex[:8]}", 5)
    assert response.status_code == 404, response.text
    assert "not found" in response.text
    tokens = db.execute(
        "SELECT outcome, count(*) FROM exactly_once_tokens WHERE created_at >= %s GROUP BY outcome",
        (since[0],),
    ).fetchall()
    assert tokens == ([("failed", 1)] if payer.name == "invoices.pay" else [])
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
