"""A versioned update never answers 200 for an update that is not in the row: a write that
loses its row to another writer fails with 409 and applies nothing; a write of its own call,
found after a retry, counts once. And the negative control (``depositUnchecked``, a write that
answers with the state it meant to write without looking at whether it matched) shows the lost
update that the check prevents."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbpatterns.service import failpoints
from dbpatterns.stack.client import Ingress
from tests.exactly_once.conftest import account
from tests.failpoint_checks import assert_fired

OUTSIDE = 1000  # what the outside writer adds


def deposit_while_another_writes(
    handler: str,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    acc: str,
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> Any:
    """Hold the deposit after its journaled read; meanwhile deposit ``OUTSIDE`` from outside the
    object (as psql would); then let the held write go. Returns its answer."""
    point = f"shapesAccount.{handler}.after-read"
    failpoint(point, "1*sleep(2000)")
    sent = ingress.call("shapesAccount", handler, 5, key=acc, send=True)
    assert sent.status_code == 202, sent.text
    deadline = time.monotonic() + 10
    while not failpoints.spent(failpoints_file, point):
        assert time.monotonic() < deadline, "the deposit never reached its read"
        time.sleep(0.02)
    assert_fired(failpoints_file, point)
    db.execute(
        "UPDATE shapes_accounts SET balance = balance + %s, version = version + 1"
        " WHERE account_id = %s",
        (OUTSIDE, acc),
    )
    return ingress.http.get(f"/restate/invocation/{sent.json()['invocationId']}/attach")


def test_a_write_that_loses_its_row_to_another_writer_fails_with_409_and_applies_nothing(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    acc = new_account(balance=100)
    outcome = deposit_while_another_writes("deposit", ingress, db, acc, failpoint, failpoints_file)
    assert outcome.status_code == 409, outcome.text
    assert "NOT applied" in outcome.text
    balance, version, mark, entries = account(db, acc)
    assert (balance, version, entries) == (100 + OUTSIDE, 1, [])  # the outside write alone
    assert mark is None


def test_a_retry_after_the_write_committed_finds_its_own_mark_and_counts_it_once(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    acc = new_account(balance=100)
    point = "shapesAccount.deposit.after-commit"
    failpoint(point, "1*error")
    response = ingress.call("shapesAccount", "deposit", 5, key=acc)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    (call,) = response.json()["calls"]
    assert response.json()["balance"] == 105
    assert account(db, acc) == (105, 1, call, [5])


def test_the_unchecked_write_answers_200_for_a_deposit_that_is_not_there(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """The negative control: a write that does not look at whether its UPDATE matched answers
    200 with the balance it meant to leave, and the deposit is not in the row."""
    acc = new_account(balance=100)
    outcome = deposit_while_another_writes(
        "depositUnchecked", ingress, db, acc, failpoint, failpoints_file
    )
    assert outcome.status_code == 200, outcome.text
    assert outcome.json()["balance"] == 105
    assert account(db, acc) == (100 + OUTSIDE, 1, None, [])


def test_a_deposit_to_an_unknown_account_is_a_404(ingress: Ingress) -> None:
    response = ingress.call("shapesAccount", "deposit", 5, key="no-such-account")
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(("key", "body"), [("bad key!", b"5"), ("A-1", b'"5"'), ("A-1", b"0")])
def test_a_bad_key_or_amount_is_a_400(key: str, body: bytes, ingress: Ingress) -> None:
    response = ingress.call("shapesAccount", "deposit", key=key, raw_body=body)
    assert response.status_code == 400, response.text
