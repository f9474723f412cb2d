"""keyed: one writer per user key; ``updateConditional`` exactly once, ``update`` not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from dbpatterns.exactly_once.calls import invocation_of_call
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.client import Ingress
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import service_log_lines


def balance_of(db: psycopg.Connection[Any], user_id: str) -> tuple[int, int]:
    row = db.execute("SELECT credits, version FROM users WHERE userid = %s", (user_id,)).fetchone()
    assert row is not None, f"user {user_id} is gone"
    return int(row[0]), int(row[1])


def mark_of(db: psycopg.Connection[Any], user_id: str) -> str | None:
    """The id of the call that last wrote the row through ``updateConditional``."""
    row = db.execute("SELECT written_by FROM users WHERE userid = %s", (user_id,)).fetchone()
    assert row is not None, f"user {user_id} is gone"
    return None if row[0] is None else str(row[0])


def shared_read(ingress: Ingress, user_id: str) -> httpx.Response:
    """``keyed/<user>/read`` takes no body (as ``curl -X POST .../read`` sends it)."""
    return ingress.http.post(ingress.path("keyed", "read", user_id))


def test_update_adds_the_credits_and_counts_the_write(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    response = ingress.call("keyed", "update", 5, key=user)
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 105, "version": 1}
    assert balance_of(db, user) == (105, 1)


def test_update_is_not_duplicate_safe_a_retry_after_the_commit_adds_twice(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """The known hole, shown: the step fails once after its commit, Restate retries it."""
    user = new_user(credits=100)
    failpoint("keyed.update.after-commit", "1*error")
    response = ingress.call("keyed", "update", 5, key=user)
    assert_fired(failpoints_file, "keyed.update.after-commit")
    assert response.status_code == 200, response.text
    assert balance_of(db, user) == (110, 2)


def test_update_conditional_adds_exactly_once(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    response = ingress.call("keyed", "updateConditional", 7, key=user)
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 107, "version": 1}
    assert balance_of(db, user) == (107, 1)
    # The write marked the row with the call's id, which names the invocation.
    mark = mark_of(db, user)
    assert mark is not None
    assert invocation_of_call(mark) == response.headers["x-restate-id"], mark


def test_update_conditional_adds_once_when_a_retry_follows_the_commit(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
    service: ServiceProcess,
) -> None:
    """Same fault as the hole above: the retry finds the version moved on and the row marked
    by its own call, and writes nothing."""
    user = new_user(credits=100)
    failpoint("keyed.updateConditional.after-commit", "1*error")
    response = ingress.call("keyed", "updateConditional", 5, key=user)
    assert_fired(failpoints_file, "keyed.updateConditional.after-commit")
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 105, "version": 1}
    assert balance_of(db, user) == (105, 1)
    mark = mark_of(db, user)
    assert mark is not None
    assert invocation_of_call(mark) == response.headers["x-restate-id"], mark
    assert len(service_log_lines(service, f"mark is this call's ({mark})")) == 1


def test_update_conditional_sums_exactly_under_50_concurrent_calls(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=1000)
    amounts = list(range(1, 51))

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ingress.url, timeout=60) as client:
            path = ingress.path("keyed", "updateConditional", user)
            return await asyncio.gather(*(client.post(path, json=n) for n in amounts))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(amounts), [
        r.text for r in responses if r.status_code != 200
    ]
    assert balance_of(db, user) == (1000 + sum(amounts), len(amounts))
    # One writer at a time: every call saw a different version, and each added its own amount.
    versions = sorted(r.json()["version"] for r in responses)
    assert versions == list(range(1, len(amounts) + 1))


def test_update_of_an_unknown_user_is_404_naming_the_user(ingress: Ingress) -> None:
    user = f"u-{uuid.uuid4().hex[:12]}"
    for handler in ("update", "updateConditional"):
        response = ingress.call("keyed", handler, 5, key=user)
        assert response.status_code == 404, response.text
        assert user in response.text
    response = shared_read(ingress, user)
    assert response.status_code == 404, response.text


def test_shared_read_answers_while_an_exclusive_update_of_the_same_key_waits(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    database_url: str,
    new_user: Callable[..., str],
) -> None:
    user = new_user(credits=100)
    with psycopg.connect(database_url) as locker, ThreadPoolExecutor(1) as pool:
        # Hold the row so the exclusive updateConditional blocks in its write step.
        locker.execute("SELECT 1 FROM users WHERE userid = %s FOR UPDATE", (user,))
        pending = pool.submit(ingress.call, "keyed", "updateConditional", 5, key=user)
        assert wait_for_service_lock_wait(db), "the exclusive call never reached the row lock"

        started = time.monotonic()
        response = shared_read(ingress, user)
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json() == {"credits": 100, "version": 0}
        assert elapsed < 1.5, f"the shared read took {elapsed:.2f}s: queued behind the update?"
        assert not pending.done(), "the exclusive call finished while the row was locked"

        locker.rollback()  # release the row
        done = pending.result(timeout=30)
    assert done.status_code == 200, done.text
    assert done.json() == {"credits": 105, "version": 1}
    assert balance_of(db, user) == (105, 1)


def wait_for_service_lock_wait(db: psycopg.Connection[Any], timeout: float = 15.0) -> bool:
    """True once a session of the service waits on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'dbpatterns-service' AND wait_event_type = 'Lock'"
        ).fetchone()
        if row and row[0]:
            return True
        time.sleep(0.02)
    return False


def test_the_same_idempotency_key_applies_once_and_a_new_key_applies_again(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    key = uuid.uuid4().hex
    first = ingress.call("keyed", "update", 5, key=user, idempotency_key=key)
    again = ingress.call("keyed", "update", 5, key=user, idempotency_key=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() == {"credits": 105, "version": 1}
    assert "idempotency-expires" in again.headers
    assert balance_of(db, user) == (105, 1)

    other = ingress.call("keyed", "update", 5, key=user, idempotency_key=uuid.uuid4().hex)
    assert other.status_code == 200, other.text
    assert balance_of(db, user) == (110, 2)
