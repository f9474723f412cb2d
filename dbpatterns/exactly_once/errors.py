"""Which database errors a retry can fix, and which end the invocation.

What a retry can fix (lost connection, serialization failure, deadlock, lock timeout, pool
timeout, the server shutting down) is raised as it is: the durable step fails and Restate
retries it. What no retry can fix, because the input is the problem (a data exception such as
a value out of range, an integrity violation such as a check constraint), becomes a
``restate.TerminalError`` with a 4xx status: Restate does not retry it, and the transaction it
happened in was rolled back, so nothing changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from restate import TerminalError

#: SQLSTATE class -> HTTP status, for the classes that a retry cannot fix.
TERMINAL_SQLSTATE_CLASSES = {"22": 400, "23": 409}  # data exception, integrity violation


@asynccontextmanager
async def database_errors(what: str) -> AsyncIterator[None]:
    """Turn errors no retry can fix into a TerminalError naming ``what`` was being done; let
    the others through, for a retry."""
    try:
        yield
    except psycopg.Error as exc:
        state = exc.sqlstate
        if state and state[:2] in TERMINAL_SQLSTATE_CLASSES:
            detail = (str(exc).splitlines() or [state])[0]
            raise TerminalError(
                f"{what} was refused by the database ({state}): {detail}",
                status_code=TERMINAL_SQLSTATE_CLASSES[state[:2]],
            ) from None
        raise
