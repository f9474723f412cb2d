"""What the library's tests share: a fault hook that is off, a stand-in for a handler's context,
and accounts of the shapes example (``dbpatterns.examples.shapes``) to deposit into."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbpatterns.exactly_once import faults


class FakeContext:
    """Enough of a handler context for code that only asks for the invocation id (fault points
    with no hook installed, a prepared transaction's steps run directly)."""

    class _Request:
        id = "inv_1abcdefghijklmnop"

    def request(self) -> _Request:
        return self._Request()


@pytest.fixture
def no_hook() -> Iterator[None]:
    """No fault hook installed, before and after the test."""
    faults.install(None)
    yield
    faults.install(None)


@pytest.fixture
def new_account(db: psycopg.Connection[Any]) -> Callable[..., str]:
    """``new_account(balance=0)`` -> the id of a fresh row of ``shapes_accounts``."""

    def make(balance: int = 0) -> str:
        account_id = f"A-{uuid.uuid4().hex[:12]}"
        db.execute(
            "INSERT INTO shapes_accounts (account_id, balance) VALUES (%s, %s)",
            (account_id, balance),
        )
        return account_id

    return make


def account(db: psycopg.Connection[Any], account_id: str) -> tuple[int, int, str | None, list[int]]:
    """``(balance, version, written_by, [amount of each entry])`` of a shapes account."""
    row = db.execute(
        "SELECT balance, version, written_by FROM shapes_accounts WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    assert row is not None, f"account {account_id} is gone"
    entries = db.execute(
        "SELECT amount FROM shapes_entries WHERE account_id = %s ORDER BY entry_id", (account_id,)
    ).fetchall()
    return int(row[0]), int(row[1]), row[2], [int(e[0]) for e in entries]
