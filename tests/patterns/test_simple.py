"""simple: each handler through the real ingress, as curl sends it, against real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from dbpatterns.stack.client import Admin, Ingress


def row_of(db: psycopg.Connection[Any], user_id: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT userid, name, address, credits, version FROM users WHERE userid = %s", (user_id,)
    ).fetchone()


def test_read_returns_the_user_row_in_camel_case(
    ingress: Ingress, new_user: Callable[..., str]
) -> None:
    user = new_user(credits=42, name="Carol")
    response = ingress.call("simple", "read", user)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "userId": user,
        "name": "Carol",
        "address": "1 Test Street",
        "credits": 42,
        "version": 0,
    }


def test_read_of_an_unknown_user_is_404_naming_the_user(ingress: Ingress) -> None:
    response = ingress.call("simple", "read", "nobody-here")
    assert response.status_code == 404, response.text
    assert "nobody-here" in response.text


def test_durable_read_returns_credits_from_a_journaled_step(
    ingress: Ingress, admin: Admin, new_user: Callable[..., str]
) -> None:
    user = new_user(credits=7)
    response = ingress.call("simple", "durableRead", user)
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 7, "version": 0}
    invocation = response.headers["x-restate-id"]
    steps = admin.query(
        f"SELECT entry_type, name FROM sys_journal WHERE id = '{invocation}'"  # noqa: S608
    )
    assert {"entry_type": "Command: Run", "name": "read credits"} in steps, steps


def test_durable_read_of_a_user_with_no_credits_answers_zero(
    ingress: Ingress, new_user: Callable[..., str]
) -> None:
    user = new_user(credits=0)
    response = ingress.call("simple", "durableRead", user)
    assert response.status_code == 200, response.text
    assert response.json()["credits"] == 0


def test_durable_read_of_an_unknown_user_is_404(ingress: Ingress) -> None:
    response = ingress.call("simple", "durableRead", "nobody-here")
    assert response.status_code == 404, response.text
    assert "nobody-here" in response.text


def test_insert_creates_the_user_once_and_a_repeat_changes_nothing(
    ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    user = f"u-{uuid.uuid4().hex[:12]}"
    body = {"userId": user, "name": "Dan", "address": "3 Commit Court", "credits": 5}
    first = ingress.call("simple", "insert", body)
    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": True}
    assert row_of(db, user) == (user, "Dan", "3 Commit Court", 5, 0)

    again = ingress.call("simple", "insert", {**body, "name": "Someone Else", "credits": 9})
    assert again.status_code == 200, again.text
    assert again.json() == {"inserted": False}
    assert row_of(db, user) == (user, "Dan", "3 Commit Court", 5, 0)


def test_update_sets_the_name_and_a_repeat_reports_no_change(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=3)
    first = ingress.call("simple", "update", {"userId": user, "newName": "Erin"})
    assert first.status_code == 200, first.text
    assert first.json() == {"updated": True}
    again = ingress.call("simple", "update", {"userId": user, "newName": "Erin"})
    assert again.status_code == 200, again.text
    assert again.json() == {"updated": False}
    assert row_of(db, user) == (user, "Erin", "1 Test Street", 3, 0)


def test_update_of_an_unknown_user_is_404_and_creates_nobody(
    ingress: Ingress, db: psycopg.Connection[Any]
) -> None:
    user = f"u-{uuid.uuid4().hex[:12]}"
    response = ingress.call("simple", "update", {"userId": user, "newName": "Ghost"})
    assert response.status_code == 404, response.text
    assert user in response.text
    assert row_of(db, user) is None
