"""idempotency: exactly once through a token committed with the credits; a call that fails
leaves a ``failed`` mark instead; tokens expire, even the token of an invocation killed after
its transaction.

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

from dbpatterns import failpoints
from dbpatterns.client import Admin, Ingress
from dbpatterns.config import Settings
from dbpatterns.exactly_once.calls import CALL_ID, INVOCATION_ID, invocation_of_call
from dbpatterns.stack import ServiceProcess
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


def scheduled_expiries_of(admin: Admin, invocation: str) -> list[dict[str, Any]]:
    """The expiry calls ``invocation`` scheduled that Restate still knows, in any state."""
    assert INVOCATION_ID.fullmatch(invocation), invocation  # Restate's SQL takes no parameters
    where = f"invoked_by_id = '{invocation}' AND target_handler_name = 'expireIdempotencyKey'"
    return admin.query(f"SELECT id, status FROM sys_invocation WHERE {where}")  # noqa: S608


def pending_expiries(admin: Admin) -> list[dict[str, Any]]:
    """Every expiry of ``user_idempotency`` Restate has not completed yet, whoever scheduled it
    (other services' expiries sweep their own tables, some with a TTL of a day)."""
    return admin.query(
        "SELECT id, status FROM sys_invocation WHERE target_service_name = 'idempotency'"
        " AND target_handler_name = 'expireIdempotencyKey' AND status != 'completed'"
    )


def expired_for(db: psycopg.Connection[Any], token: str) -> float:
    """Seconds since the token's ``expires_at`` on the database's clock (negative: not yet)."""
    row = db.execute(
        "SELECT extract(epoch FROM clock_timestamp() - expires_at)::float8"
        " FROM user_idempotency WHERE id = %s",
        (token,),
    ).fetchone()
    assert row is not None, f"token {token} is gone"
    return float(row[0])


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


def test_a_token_whose_expiry_was_killed_with_its_invocation_goes_with_the_next_expiry(
    settings: Settings,
    ingress: Ingress,
    admin: Admin,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Killing an invocation through Restate kills the delayed calls it scheduled (measured
    with restate-server 1.7.12), so a kill after the commit takes the token's own expiry with
    it; the token stays past its ``expires_at``, and the next call's expiry deletes every
    expired token, this one included."""
    ttl = settings.idempotency_token_ttl.total_seconds()
    # Expiries scheduled by earlier tests would sweep the token too: let them all run first,
    # so that only the next call's expiry can delete it.
    wait_for(lambda: not pending_expiries(admin), 2 * ttl + SLACK, "earlier expiries to run")
    point = "idempotency.update.after-step"
    user = new_user(credits=100)
    failpoint(point, "1*sleep(8000)")
    sent = ingress.call("idempotency", "update", {"userId": user, "addCredits": 5}, send=True)
    assert sent.status_code == 202, sent.text
    invocation = sent.json()["invocationId"]
    wait_for(lambda: failpoints.spent(failpoints_file, point), 10, "the step to be journaled")
    assert_fired(failpoints_file, point)
    ((token, outcome),) = tokens_of(db, invocation).items()
    assert outcome == "committed"
    assert credits_of(db, user) == 105
    assert len(scheduled_expiries_of(admin, invocation)) == 1

    kill = admin.http.patch(f"/invocations/{invocation}/kill")
    assert kill.status_code in (200, 202), kill.text
    outcome_of_call = ingress.http.get(f"/restate/invocation/{invocation}/attach")
    assert outcome_of_call.status_code != 200, "the invocation was not killed: it proves nothing"
    assert scheduled_expiries_of(admin, invocation) == []  # its own expiry is gone

    # Past its expires_at (and its own expiry's due time) on the database's clock: still there.
    wait_for(lambda: expired_for(db, token) > 2, 2 * ttl + SLACK, "the token to expire")
    assert token_recorded(db, token), "deleted with no expiry left to delete it"
    next_call = ingress.call("idempotency", "update", {"userId": user, "addCredits": 1})
    assert next_call.status_code == 200, next_call.text
    wait_for(
        lambda: not token_recorded(db, token),
        2 * ttl + SLACK,
        "the next call's expiry to sweep the killed invocation's token",
    )
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
