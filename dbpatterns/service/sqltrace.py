"""Which attempt of which invocation ran SQL: a statement trace for the chaos suite.

A fault test must prove its fault had an effect before it trusts an outcome: a zombie cell
proves nothing if the zombie never reached the database after it resumed (its session may have
been ended by Postgres's idle-in-transaction timeout first). DBOS counts executions of a step
and asserts the count; this trace is how the chaos harness counts the attempts of an invocation
that reached the database, and what each of them ran.

Off unless ``DBPATTERNS_SQL_TRACE_FILE`` names a file (``Settings.sql_trace_file``); then every
statement the service's pool runs inside a Restate handler, and every COMMIT of
``db.transaction()``, appends one JSON line to it:

``{"t": <unix time>, "pid": <service pid>, "invocation": "inv_...", "attempt": "<id>",
"statement": "UPDATE", "ok": true, "sqlstate": null}``

``attempt`` names one execution of the handler: Restate starts every attempt of an invocation
with a fresh context object, so one id per context object is one id per attempt. ``ok`` is true
when Postgres executed the statement; a statement Postgres refused (a constraint, 42704, a lock
timeout) also reached the database and is traced with its SQLSTATE; a session that was already
gone (terminated, timed out while idle in a transaction) answers with an error too, and its
SQLSTATE says so (25P03, 57P01, 08xxx). Lines are short and written with one ``O_APPEND`` write,
so the two service processes of the chaos stack can share the file.

With the setting off, nothing here runs: the pool uses psycopg's own connection class.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from restate.extensions import current_context

from dbpatterns.config import get_settings

#: Set on an error the cursor traced, so the transaction's exit does not trace it again.
_TRACED = "_dbpatterns_traced"

_fd: int | None = None
_attempts: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def trace_file() -> Path | None:
    return get_settings().sql_trace_file


def enabled() -> bool:
    return trace_file() is not None


def _attempt() -> tuple[str, str] | None:
    """(invocation id, attempt id) of the handler this task runs for; None outside one."""
    ctx = current_context()
    if ctx is None:
        return None
    attempt = _attempts.get(ctx)
    if attempt is None:
        attempt = _attempts[ctx] = uuid.uuid4().hex[:12]
    return ctx.request().id, attempt


def record(statement: str, error: BaseException | None = None) -> None:
    """Append one line for ``statement`` (its first word is enough) run by this attempt."""
    global _fd
    path = trace_file()
    who = _attempt()
    if path is None or who is None:
        return
    if _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = {
        "t": round(time.time(), 6),
        "pid": os.getpid(),
        "invocation": who[0],
        "attempt": who[1],
        "statement": statement.split(None, 1)[0].upper() if statement.strip() else "",
        "ok": error is None,
        "sqlstate": getattr(error, "sqlstate", None),
        "error": type(error).__name__ if error is not None else None,
    }
    os.write(_fd, (json.dumps(line) + "\n").encode())


def _text(query: Any) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    return type(query).__name__.upper()  # a psycopg.sql.Composed: PREPARE/COMMIT PREPARED ...


class TracedCursor(psycopg.AsyncCursor[Any]):
    """psycopg's cursor, tracing each statement's outcome (``conn.execute`` uses it too)."""

    async def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> TracedCursor:
        text = _statement_text(query, self)
        try:
            await super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.Error as exc:
            record(text, exc)
            setattr(exc, _TRACED, True)
            raise
        record(text)
        return self


def _statement_text(query: Any, cursor: psycopg.AsyncCursor[Any]) -> str:
    if isinstance(query, (str, bytes)):
        return _text(query)
    try:
        return str(query.as_string(cursor.connection))
    except Exception:
        return _text(query)


class TracedConnection(psycopg.AsyncConnection[Any]):
    """psycopg's connection with the traced cursor, tracing the COMMIT that ends each
    ``transaction()`` block (or the COMMIT's error). The pool uses it only with the trace on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = TracedCursor

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[psycopg.AsyncTransaction]:
        try:
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
        except psycopg.Error as exc:
            if not getattr(exc, _TRACED, False):
                record("COMMIT", exc)  # the statements inside were traced; this is the COMMIT's
            raise
        if not self.closed:
            record("COMMIT")


def connection_class() -> type[psycopg.AsyncConnection[Any]]:
    """The class of the service pool's connections: psycopg's own, or the traced one."""
    return TracedConnection if enabled() else psycopg.AsyncConnection
