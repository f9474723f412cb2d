"""idempotency: exactly once through a token committed with the credits; tokens expire, even
the token of an invocation killed after its transaction."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from dbpatterns import failpoints
from dbpatterns.client import Admin, Ingress
from dbpatterns.exactly_once.prepared import INVOCATION_ID
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import credits_of, wait_for


def token_recorded(db: psycopg.Connection[Any], token: str) -> bool:
    return (
        db.execute("SELECT 1 FROM user_idempotency WHERE id = %s", (token,)).fetchone() is not None
    )


def tokens_since(db: psycopg.Connection[Any], since: Any) -> int:
    row = db.execute(
        "SELECT count(*) FROM user_idempotency WHERE created_at >= %s", (since,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def tokens_of_since(db: psycopg.Connection[Any], since: Any) -> list[str]:
    rows = db.execute(
        "SELECT id::text FROM user_idempotency WHERE created_at >= %s", (since,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def scheduled_expiries_of(admin: Admin, invocation: str) -> list[dict[str, Any]]:
    """The expiry calls ``invocation`` scheduled that Restate still knows, in any state."""
    assert INVOCATION_ID.fullmatch(invocation), invocation  # Restate's SQL takes no parameters
    where = f"invoked_by_id = '{invocation}' AND target_handler_name = 'expireIdempotencyKey'"
    return admin.query(f"SELECT id, status FROM sys_invocation WHERE {where}")  # noqa: S608


def db_now(db: psycopg.Connection[Any]) -> Any:
    row = db.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def test_update_adds_the_credits_once_and_records_its_token(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["applied"], body["credits"]) == (True, 105)
    assert credits_of(db, user) == 105
    assert token_recorded(db, body["token"])


def test_the_token_is_deleted_after_its_ttl(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    """The test stack runs with a 3 s TTL (tests/conftest.py), counted from the call's start."""
    user = new_user(credits=100)
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 1})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert token_recorded(db, token)
    deadline = time.monotonic() + 15
    while token_recorded(db, token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not token_recorded(db, token), "the token outlived its TTL by more than 12 s"
    assert credits_of(db, user) == 101


def test_update_adds_once_when_a_retry_follows_the_commit(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """The step fails after its commit; the retry finds its token and adds nothing."""
    user = new_user(credits=100)
    failpoint("idempotency.update.after-commit", "1*error")
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert_fired(failpoints_file, "idempotency.update.after-commit")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["applied"], body["credits"]) == (False, 105)
    assert credits_of(db, user) == 105


def test_update_adds_once_when_the_transaction_fails_before_its_commit(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Token and credits roll back together; the retry inserts both."""
    user = new_user(credits=100)
    failpoint("idempotency.update.before-commit", "1*error")
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert_fired(failpoints_file, "idempotency.update.before-commit")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["applied"], body["credits"]) == (True, 105)
    assert credits_of(db, user) == 105


def test_the_expiry_is_scheduled_before_the_transaction(
    ingress: Ingress, admin: Admin, new_user: Callable[..., str]
) -> None:
    """The journal holds the delayed expiry call before the transaction's step: whatever ends
    the invocation after its commit, the expiry is already scheduled."""
    response = ingress.call("idempotency", "update", {"userId": new_user(), "addCredits": 1})
    assert response.status_code == 200, response.text
    invocation = response.headers["x-restate-id"]
    assert INVOCATION_ID.fullmatch(invocation), invocation  # Restate's SQL takes no parameters
    journal = admin.query(
        f"SELECT index, entry_type, name FROM sys_journal WHERE id = '{invocation}' ORDER BY index"  # noqa: S608
    )
    kinds = [(e["entry_type"], e.get("name") or "") for e in journal]
    send = kinds.index(("Command: OneWayCall", ""))
    step = kinds.index(("Command: Run", "add credits with token"))
    assert send < step, kinds
    assert [k for k, _ in kinds].count("Command: OneWayCall") == 1


def test_a_token_whose_expiry_was_killed_with_its_invocation_goes_with_the_next_expiry(
    ingress: Ingress,
    admin: Admin,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Killing an invocation through Restate kills the delayed calls it scheduled (measured
    with restate-server 1.7.12), so a kill after the commit takes the token's own expiry with
    it; the next call's expiry deletes every token older than the TTL, this one included."""
    point = "idempotency.update.after-step"
    user = new_user(credits=100)
    since = db_now(db)
    failpoint(point, "1*sleep(8000)")
    sent = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5}, send=True)
    assert sent.status_code == 202, sent.text
    invocation = sent.json()["invocationId"]
    wait_for(lambda: failpoints.spent(failpoints_file, point), 10, "the step to be journaled")
    assert_fired(failpoints_file, point)
    (token,) = tokens_of_since(db, since)
    assert credits_of(db, user) == 105
    assert len(scheduled_expiries_of(admin, invocation)) == 1

    kill = admin.http.patch(f"/invocations/{invocation}/kill")
    assert kill.status_code in (200, 202), kill.text
    outcome = ingress.http.get(f"/restate/invocation/{invocation}/attach")
    assert outcome.status_code != 200, "the invocation was not killed: the test proves nothing"
    assert scheduled_expiries_of(admin, invocation) == []  # its own expiry is gone

    time.sleep(3)  # the TTL (tests/conftest.py): the token is now older than it
    assert token_recorded(db, token)
    next_call = ingress.call("idempotency", "update", {"userId": user, "addCredits": 1})
    assert next_call.status_code == 200, next_call.text
    deadline = time.monotonic() + 15
    while token_recorded(db, token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not token_recorded(db, token), "the next call's expiry did not sweep the killed token"
    assert credits_of(db, user) == 106


def test_update_sums_exactly_under_30_concurrent_calls(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=0)
    amounts = list(range(1, 31))

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ingress.url, timeout=60) as client:
            path = ingress.path("idempotency", "update")
            return await asyncio.gather(
                *(client.post(path, json={"userId": user, "addCredits": n}) for n in amounts)
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(amounts), [
        r.text for r in responses if r.status_code != 200
    ]
    assert all(r.json()["applied"] for r in responses)
    assert len({r.json()["token"] for r in responses}) == len(amounts)
    assert credits_of(db, user) == sum(amounts)


def test_the_same_idempotency_key_applies_once_and_a_new_key_applies_again(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    body = {"userId": user, "addCredits": 5}
    key = uuid.uuid4().hex
    first = ingress.call("idempotency", "update", body, idempotency_key=key)
    again = ingress.call("idempotency", "update", body, idempotency_key=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()
    assert credits_of(db, user) == 105

    other = ingress.call("idempotency", "update", body, idempotency_key=uuid.uuid4().hex)
    assert other.status_code == 200, other.text
    assert other.json()["token"] != first.json()["token"]
    assert credits_of(db, user) == 110


def test_update_of_an_unknown_user_is_404_and_leaves_no_token(
    ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    """Its expiry, scheduled before the transaction, later finds no token: harmless."""
    user = f"u-{uuid.uuid4().hex[:12]}"
    since = db_now(db)
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert response.status_code == 404, response.text
    assert user in response.text
    assert tokens_since(db, since) == 0


def test_expire_idempotency_key_is_not_callable_from_outside(ingress: Ingress) -> None:
    """Deleting a live token early would reopen the window it closes."""
    response = ingress.call("idempotency", "expireIdempotencyKey", str(uuid.uuid4()))
    assert response.status_code == 400, response.text
    assert "not public" in response.text
