"""The library at its API surface, as users' handlers use it (``dbpatterns.examples.shapes``):
two calls of a pattern in one invocation, one after the other or at once; works that return
``None``; two services on one token table with different TTLs; a call past its deadline; an
isolation level; a bounded retry. Each test that relies on a fault asserts that it fired first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dbpatterns.examples import shapes
from dbpatterns.stack.client import Ingress
from tests.exactly_once.conftest import account
from tests.failpoint_checks import assert_fired

TWICE = ["depositTwice", "depositTogether", "prepareTwice", "prepareTogether"]


def ledger(db: psycopg.Connection[Any], account_id: str) -> tuple[int, int, list[int]]:
    """``(balance, version, [amount of each entry])``."""
    balance, version, _, entries = account(db, account_id)
    return balance, version, entries


def outcomes(db: psycopg.Connection[Any], invocation: str) -> list[str]:
    """The outcome of each token of an invocation's calls in ``shapes_tokens``."""
    rows = db.execute(
        "SELECT outcome FROM shapes_tokens WHERE starts_with(id, %s)", (f"{invocation}:",)
    ).fetchall()
    return [str(r[0]) for r in rows]


def deposit(
    ingress: Ingress, handler: str, account_id: str, amount: int, service: str = "shapes", **kw: Any
) -> httpx.Response:
    return ingress.call(service, handler, {"accountId": account_id, "amount": amount}, **kw)


def tokens(db: psycopg.Connection[Any], ids: list[str]) -> dict[str, tuple[str, Any]]:
    """``{token: (outcome, result)}`` of the rows of ``shapes_tokens`` among ``ids``."""
    rows = db.execute(
        "SELECT id, outcome, result FROM shapes_tokens WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def prepared_left(db: psycopg.Connection[Any]) -> list[str]:
    rows = db.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", (shapes.GID_PREFIX,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- two calls in one invocation ---------------------------------------------------------------


@pytest.mark.parametrize("handler", TWICE)
def test_two_calls_in_one_invocation_each_apply_their_work_once(
    handler: str,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
) -> None:
    acc = new_account()
    response = deposit(ingress, handler, acc, 5)
    assert response.status_code == 200, response.text
    invocation = response.headers["x-restate-id"]
    body = response.json()
    assert body["balance"] == 10
    first, second = body["calls"]
    assert first != second
    assert first.startswith(f"{invocation}:")
    assert second.startswith(f"{invocation}:")
    assert ledger(db, acc) == (10, 2, [5, 5])
    wait_for(lambda: not prepared_left(db), 10, "no prepared transaction left")


@pytest.mark.parametrize("handler", TWICE)
def test_two_calls_in_one_invocation_apply_once_each_across_a_retry_after_a_commit(
    handler: str,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    acc = new_account()
    point = f"shapes.{handler}.after-commit"
    failpoint(point, "1*error")
    response = deposit(ingress, handler, acc, 5)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == 10
    assert ledger(db, acc) == (10, 2, [5, 5])
    wait_for(lambda: not prepared_left(db), 10, "no prepared transaction left")


def test_the_same_idempotency_key_twice_applies_both_calls_once(
    ingress: Ingress, db: psycopg.Connection[Any], new_account: Callable[..., str]
) -> None:
    acc = new_account()
    key = f"twice-{uuid.uuid4()}"
    first = deposit(ingress, "prepareTwice", acc, 3, idempotency_key=key)
    again = deposit(ingress, "prepareTwice", acc, 3, idempotency_key=key)
    assert (first.status_code, again.status_code) == (200, 200), (first.text, again.text)
    assert first.json() == again.json()
    assert ledger(db, acc) == (6, 2, [3, 3])


# --- works that return None --------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["depositNothing", "prepareMaybe"])
def test_a_work_that_returns_none_answers_null_once_across_a_retry_after_its_commit(
    handler: str,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    acc = new_account()
    point = f"shapes.{handler}.after-commit"
    failpoint(point, "1*error")
    response = deposit(ingress, handler, acc, 7)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    assert response.json()["balance"] is None
    assert ledger(db, acc) == (7, 1, [7])


def test_a_none_result_is_recorded_as_json_null_with_the_committed_token(
    ingress: Ingress, db: psycopg.Connection[Any], new_account: Callable[..., str]
) -> None:
    response = deposit(ingress, "depositNothing", new_account(), 1)
    assert response.status_code == 200, response.text
    (token,) = response.json()["calls"]
    (recorded,) = db.execute(
        "SELECT outcome, jsonb_typeof(result) FROM shapes_tokens WHERE id = %s", (token,)
    ).fetchall()
    assert recorded == ("committed", "null")


# --- one token table, two TTLs -----------------------------------------------------------------


def test_a_brief_ttl_on_a_shared_token_table_never_expires_another_services_tokens(
    ingress: Ingress, db: psycopg.Connection[Any], new_account: Callable[..., str]
) -> None:
    """``shapesBrief`` (tokens of seconds) shares ``shapes_tokens`` with ``shapes`` (a day).
    The brief call's expiry, which also sweeps every expired token, leaves the day-long ones."""
    long_lived = deposit(ingress, "depositTwice", new_account(), 1)
    assert long_lived.status_code == 200, long_lived.text
    day_tokens = long_lived.json()["calls"]
    brief = deposit(ingress, "deposit", new_account(), 1, service="shapesBrief")
    assert brief.status_code == 200, brief.text
    (brief_token,) = brief.json()["calls"]
    assert set(tokens(db, [brief_token, *day_tokens])) == {brief_token, *day_tokens}

    wait_for(
        lambda: not tokens(db, [brief_token]),
        2 * shapes.BRIEF_TTL.total_seconds() + 20,
        "the brief token's expiry",
    )
    left = tokens(db, day_tokens)
    assert set(left) == set(day_tokens), "a brief TTL's expiry deleted another service's tokens"
    (days,) = db.execute(
        "SELECT min(expires_at - created_at) FROM shapes_tokens WHERE id = ANY(%s)", (day_tokens,)
    ).fetchone() or (None,)
    assert days is not None
    assert days.total_seconds() > shapes.TTL.total_seconds()


# --- the deadline ------------------------------------------------------------------------------


def test_a_call_whose_transaction_comes_after_its_deadline_writes_nothing_and_says_so(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Held before its transaction for longer than its TTL (``shapesBrief``: 4 s), the call
    reaches its fence past the deadline: 504, nothing written, its token marked failed."""
    acc = new_account(balance=100)
    point = "shapesBrief.deposit.before-claim"
    held_ms = int(shapes.BRIEF_TTL.total_seconds() * 1000) + 2000
    failpoint(point, f"1*sleep({held_ms})")
    response = deposit(ingress, "deposit", acc, 5, service="shapesBrief")
    assert_fired(failpoints_file, point)
    assert response.status_code == 504, response.text
    assert "deadline" in response.text
    assert ledger(db, acc) == (100, 0, [])
    assert outcomes(db, response.headers["x-restate-id"]) == ["failed"]


# --- an isolation level, a bounded retry -------------------------------------------------------


def test_an_idempotent_transaction_runs_at_the_isolation_level_it_asks_for(
    ingress: Ingress, db: psycopg.Connection[Any], new_account: Callable[..., str]
) -> None:
    """The work checks ``SHOW transaction_isolation`` itself and refuses anything else."""
    acc = new_account()
    response = deposit(ingress, "depositSerializable", acc, 4)
    assert response.status_code == 200, response.text
    assert ledger(db, acc) == (4, 1, [4])


def test_a_step_that_keeps_failing_ends_after_its_bounded_attempts_and_writes_nothing(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_account: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    acc = new_account(balance=10)
    point = "shapes.depositBounded.before-commit"
    failpoint(point, f"{shapes.BOUNDED_ATTEMPTS}*error")
    response = deposit(ingress, "depositBounded", acc, 5)
    assert_fired(failpoints_file, point)  # every attempt within the bound failed there
    assert response.status_code == 500, response.text
    assert ledger(db, acc) == (10, 0, [])
    assert outcomes(db, response.headers["x-restate-id"]) == ["failed"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"accountId": "A", "amount": "x"}', b'{"accountId": "A"}', b"[]", b'{"accountId": 1}'],
)
def test_a_malformed_deposit_is_a_400_and_changes_nothing(body: bytes, ingress: Ingress) -> None:
    response = ingress.call("shapes", "depositTwice", raw_body=body)
    assert response.status_code == 400, response.text


def test_a_deposit_to_an_unknown_account_is_a_404_for_every_shape(ingress: Ingress) -> None:
    for handler in [*TWICE, "depositNothing", "prepareMaybe", "depositSerializable"]:
        response = deposit(ingress, handler, "no-such-account", 1)
        assert response.status_code == 404, (handler, response.text)
