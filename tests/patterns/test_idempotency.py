"""idempotency: exactly once through a token committed with the credits; a call that fails
leaves a ``failed`` mark instead; tokens expire. (The token of an invocation killed after its
transaction, which the next call's expiry sweeps, is the chaos suite's: tests/chaos/test_surface.py,
on a service whose TTL is seconds.)

Timing is in terms of the test stack's TTL (``settings.idempotency_token_ttl``): a call commits
within one TTL of its start, its token expires one TTL after that, and its expiry is scheduled
two TTLs after the call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from dbpatterns.config import Settings
from dbpatterns.exactly_once.calls import CALL_ID, INVOCATION_ID, invocation_of_call
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.client import Admin, Ingress
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import credits_of, service_log_lines, wait_for

#: How long past its due time an expiry may take to run and delete, on a loaded machine.
SLACK = 15.0


def outcome_of(db: psycopg.Connection[Any], token: str) -> str | None:
    """The token's ``outcome`` (``committed`` or ``failed``); None: no row."""
    row = db.execute("SELECT outcome FROM user_idempotency WHERE id = %s", (token,)).fetchone()
    return None if row is None else str(row[0])


def token_recorded(db: psycopg.Connection[Any], token: str) -> bool:
    return outcome_of(db, token) is not None


def tokens_of(db: psycopg.Connection[Any], invocation: str) -> dict[str, str]:
    """The tokens of ``invocation``'s calls (``<invocation id>:<16 hex digits>``): outcome by id."""
    rows = db.execute(
        "SELECT id, outcome FROM user_idempotency WHERE starts_with(id, %s)", (f"{invocation}:",)
    ).fetchall()
    return {str(token): str(outcome) for token, outcome in rows}


def tokens_since(db: psycopg.Connection[Any], since: Any, outcome: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM user_idempotency WHERE created_at >= %s AND outcome = %s",
        (since, outcome),
    ).fetchone()
    assert row is not None
    return int(row[0])


def token_of(response: httpx.Response) -> str:
    """The token a successful call answered with: its call id, which names its invocation."""
    token = str(response.json()["token"])
    assert CALL_ID.fullmatch(token), token
    assert invocation_of_call(token) == response.headers["x-restate-id"], token
    return token


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
    token = token_of(response)
    assert response.json() == {"credits": 105, "token": token}
    assert credits_of(db, user) == 105
    assert tokens_of(db, response.headers["x-restate-id"]) == {token: "committed"}


def test_the_token_is_kept_a_ttl_past_the_calls_deadline_then_deleted(
    settings: Settings,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
) -> None:
    """The token expires at the call's start plus two TTLs (its deadline, then one TTL more),
    and its expiry, scheduled two TTLs after the call, deletes it."""
    ttl = settings.idempotency_token_ttl
    user = new_user(credits=100)
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 1})
    assert response.status_code == 200, response.text
    token = token_of(response)
    assert outcome_of(db, token) == "committed"
    row = db.execute(
        "SELECT expires_at, expires_at - created_at FROM user_idempotency WHERE id = %s", (token,)
    ).fetchone()
    assert row is not None
    expires_at, kept_for = row
    # Inserted between the call's start and its deadline (one TTL later), so kept one to two
    # TTLs (a second's leeway: the service's clock starts the call, the database's stamps it).
    leeway = timedelta(seconds=1)
    assert ttl - leeway < kept_for <= 2 * ttl + leeway, kept_for
    wait_for(
        lambda: not token_recorded(db, token),
        2 * ttl.total_seconds() + SLACK,
        f"the token to be deleted (it outlived two TTLs by more than {SLACK:.0f} s)",
    )
    assert db_now(db) >= expires_at, "the token was deleted before it expired"
    assert credits_of(db, user) == 101


def test_update_adds_once_when_a_retry_follows_the_commit(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
    service: ServiceProcess,
) -> None:
    """The step fails after its commit; the retry finds its token and adds nothing."""
    user = new_user(credits=100)
    failpoint("idempotency.update.after-commit", "1*error")
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert_fired(failpoints_file, "idempotency.update.after-commit")
    assert response.status_code == 200, response.text
    token = token_of(response)
    assert response.json() == {"credits": 105, "token": token}
    # The retry found the token committed and answered with its recorded result.
    assert len(service_log_lines(service, f"token {token} already recorded")) == 1
    assert credits_of(db, user) == 105
    assert tokens_of(db, response.headers["x-restate-id"]) == {token: "committed"}


def test_update_adds_once_when_the_transaction_fails_before_its_commit(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
    service: ServiceProcess,
) -> None:
    """Token and credits roll back together; the retry inserts both."""
    user = new_user(credits=100)
    failpoint("idempotency.update.before-commit", "1*error")
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert_fired(failpoints_file, "idempotency.update.before-commit")
    assert response.status_code == 200, response.text
    token = token_of(response)
    assert response.json() == {"credits": 105, "token": token}
    # The retry found no token (the first attempt's rolled back) and committed its own work.
    assert service_log_lines(service, f"token {token} already recorded") == []
    assert credits_of(db, user) == 105
    assert tokens_of(db, response.headers["x-restate-id"]) == {token: "committed"}


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
    tokens = {token_of(r) for r in responses}
    assert len(tokens) == len(amounts)
    assert {outcome_of(db, token) for token in tokens} == {"committed"}
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


def test_update_of_an_unknown_user_is_404_and_leaves_only_a_failed_mark(
    ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    """No committed token: the credits were not added. The call's token is marked ``failed``
    instead (with no result), so no late attempt of it can add them; it expires like any."""
    user = f"u-{uuid.uuid4().hex[:12]}"
    since = db_now(db)
    response = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5})
    assert response.status_code == 404, response.text
    assert user in response.text
    assert tokens_since(db, since, "committed") == 0
    assert tokens_since(db, since, "failed") == 1
    row = db.execute(
        "SELECT result FROM user_idempotency WHERE created_at >= %s AND outcome = 'failed'",
        (since,),
    ).fetchone()
    assert row == (None,)


def test_expire_idempotency_key_is_not_callable_from_outside(ingress: Ingress) -> None:
    """Deleting a live token early would reopen the window it closes."""
    token = f"inv_1{uuid.uuid4().hex}:{uuid.uuid4().hex[:16]}"
    response = ingress.call("idempotency", "expireIdempotencyKey", token)
    assert response.status_code == 400, response.text
    assert "not public" in response.text
