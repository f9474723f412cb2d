"""What no retry can fix ends the call with a terminal error that says what to fix; what a retry
can fix is left to Restate's retries. Errors raised by a real Postgres where one can be
provoked in a session, constructed where it needs a server configured otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
import restate

from dbpatterns.exactly_once.errors import database_errors, terminal_error


def error_of(database_url: str, *statements: str) -> psycopg.Error:
    """The error the last of ``statements`` raises, in one transaction, on a real server."""
    with psycopg.connect(database_url) as conn:
        try:
            for statement in statements:
                conn.execute(statement)
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{statements[-1]!r} raised nothing")


@pytest.mark.parametrize(
    ("statements", "status", "hint"),
    [
        (["SELECT * FROM no_such_table"], 500, "migrate the schema"),
        (["SELECT no_such_column FROM users"], 500, "migrate the schema"),
        (["SELEC 1"], 500, "fix the SQL"),
        (
            ["SELECT 1", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
            500,
            "pass isolation=",
        ),
        (["SELECT 1 / 0"], 400, None),
        (
            ["INSERT INTO users (userid, name, address, credits) VALUES ('x', 'n', 'a', -1)"],
            409,
            None,
        ),
    ],
)
def test_an_error_no_retry_can_fix_is_terminal_with_its_status_and_what_to_do(
    statements: list[str], status: int, hint: str | None, database_url: str
) -> None:
    exc = error_of(database_url, *statements)
    error = terminal_error("doing the work", exc)
    assert error is not None, f"{exc.sqlstate} was left to retries"
    assert error.status_code == status
    assert "doing the work was refused by the database" in error.message
    assert exc.sqlstate is not None
    assert exc.sqlstate in error.message
    if hint is not None:
        assert hint in error.message


def test_prepared_transactions_switched_off_is_terminal_and_says_how_to_switch_them_on() -> None:
    exc = psycopg.errors.ObjectNotInPrerequisiteState("prepared transactions are disabled")
    error = terminal_error("preparing", exc)
    assert error is not None
    assert error.status_code == 500
    assert "max_prepared_transactions" in error.message


@pytest.mark.parametrize(
    "error_class",
    [
        psycopg.errors.SerializationFailure,  # 40001
        psycopg.errors.DeadlockDetected,  # 40P01
        psycopg.errors.LockNotAvailable,  # 55P03: lock_timeout
        psycopg.errors.ObjectInUse,  # 55006: a prepared transaction busy in another session
        psycopg.errors.IdleInTransactionSessionTimeout,  # 25P03
        psycopg.errors.ReadOnlySqlTransaction,  # 25006: a standby behind a stale address
        psycopg.errors.AdminShutdown,  # 57P01
        psycopg.errors.TooManyConnections,  # 53300
        psycopg.OperationalError,  # a lost connection: no SQLSTATE
    ],
)
def test_an_error_a_retry_can_fix_is_left_to_restates_retries(error_class: type[Any]) -> None:
    assert terminal_error("doing the work", error_class("transient")) is None


def test_database_errors_raises_the_terminal_error_and_passes_the_others_through() -> None:
    async def raising(exc: Exception) -> None:
        async with database_errors("the work"):
            raise exc

    with pytest.raises(restate.TerminalError):
        asyncio.run(raising(psycopg.errors.UndefinedTable("no such table")))
    with pytest.raises(psycopg.errors.SerializationFailure):
        asyncio.run(raising(psycopg.errors.SerializationFailure("again")))
