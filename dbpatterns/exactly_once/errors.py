"""Which database errors a retry can fix, and which end the call with a terminal error.

What a retry can fix (a lost connection, a serialization failure or deadlock, a lock timeout,
the pool's timeout, the server shutting down or out of connections, a session ended by
``idle_in_transaction_session_timeout``, a read-only standby the pool reached after a failover)
is raised as it is: the durable step fails and Restate retries it. What no retry can fix ends
the call with a ``restate.TerminalError``; the transaction it happened in was rolled back, so
nothing changed:

* the input is the problem (a data exception such as a value out of range: 400; an integrity
  violation such as a check constraint: 409);
* the code or the schema is (class 42: a missing table or column, a syntax error, a missing
  privilege; class 25: a statement the transaction state forbids, such as ``SET TRANSACTION``
  after the transaction's first statement; 55000: ``max_prepared_transactions = 0``): 500, with
  what to fix.

Retried forever, these would keep the invocation, and whatever it holds, alive for nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from restate import TerminalError

#: SQLSTATE class -> HTTP status, for the classes that a retry cannot fix.
TERMINAL_SQLSTATE_CLASSES = {
    "22": 400,  # data exception: the input
    "23": 409,  # integrity constraint violation: the input, against the data
    "42": 500,  # syntax error or access rule violation: the code or the schema
    "25": 500,  # invalid transaction state: the code
}
#: Single SQLSTATEs that no retry fixes, in classes that are otherwise retryable.
TERMINAL_SQLSTATES = {"55000": 500}  # object not in prerequisite state (prepared xacts off)
#: Single SQLSTATEs that a retry may fix, in classes that are otherwise terminal.
RETRYABLE_SQLSTATES = frozenset(
    {
        "25006",  # read-only transaction: a standby, reached through a stale address
        "25P03",  # idle_in_transaction_session_timeout ended the session
        "25P04",  # transaction_timeout ended the session (PostgreSQL 17)
    }
)

#: What to do about a terminal error of a class that is not the caller's input.
HINTS = {
    "42": "fix the SQL or migrate the schema it expects",
    "25": "the statement is not allowed where it ran (pass isolation= instead of SET TRANSACTION)",
    "55000": "enable prepared transactions: max_prepared_transactions > 0 in postgresql.conf",
}


def terminal_status(state: str | None) -> int | None:
    """The HTTP status of a terminal error for SQLSTATE ``state``; None: a retry may fix it."""
    if not state or state in RETRYABLE_SQLSTATES:
        return None
    return TERMINAL_SQLSTATES.get(state) or TERMINAL_SQLSTATE_CLASSES.get(state[:2])


def terminal_error(what: str, exc: psycopg.Error) -> TerminalError | None:
    """The TerminalError that ends the call for ``exc``; None if a retry may fix it."""
    state = exc.sqlstate
    status = terminal_status(state)
    if status is None or state is None:
        return None
    detail = (str(exc).splitlines() or [state])[0]
    hint = HINTS.get(state) or HINTS.get(state[:2])
    return TerminalError(
        f"{what} was refused by the database ({state}): {detail}" + (f"; {hint}" if hint else ""),
        status_code=status,
    )


@asynccontextmanager
async def database_errors(what: str) -> AsyncIterator[None]:
    """Turn errors no retry can fix into a TerminalError naming ``what`` was being done; let
    the others through, for a retry."""
    try:
        yield
    except psycopg.Error as exc:
        error = terminal_error(what, exc)
        if error is not None:
            raise error from None
        raise
