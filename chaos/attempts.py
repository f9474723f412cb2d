"""How many attempts of each invocation reached the database, read from the service's SQL trace.

The services of the chaos stack trace every statement each handler attempt runs
(``dbpatterns.service.sqltrace``). A statement *reached the database* when Postgres executed it, or
refused it for what it said (a constraint, 42704, a lock timeout); it did not when the session
was already gone: ended by the idle-in-transaction timeout (25P03), terminated by an
administrator or a shutdown (57P0x), or lost (08xxx). A zombie cell proves its race only if the
zombie's attempt reached the database *after it resumed*.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: SQLSTATEs (and their classes) that mean the statement never ran: the session was gone.
SESSION_GONE = ("25P03", "57P01", "57P02", "57P03", "08")


def reached_database(line: dict[str, Any]) -> bool:
    if line.get("ok"):
        return True
    state = line.get("sqlstate")
    return bool(state) and not str(state).startswith(SESSION_GONE)


@dataclass
class Attempt:
    """One execution of a handler, in one process."""

    invocation: str
    attempt: str
    pid: int
    statements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reached_database(self) -> bool:
        return any(reached_database(s) for s in self.statements)

    def after(self, moment: float) -> list[dict[str, Any]]:
        return [s for s in self.statements if s["t"] >= moment]


class Trace:
    """The trace file, read from a given offset (a cell reads only its own lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, since: int = 0) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        lines = []
        for raw in data.splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a line cut by a process killed mid-write
        return lines


def attempts(lines: Iterable[dict[str, Any]]) -> dict[str, list[Attempt]]:
    """The attempts of each invocation, in the order their first statement ran."""
    by_attempt: dict[str, Attempt] = {}
    for line in lines:
        key = line["attempt"]
        if key not in by_attempt:
            by_attempt[key] = Attempt(line["invocation"], key, int(line["pid"]))
        by_attempt[key].statements.append(line)
    grouped: dict[str, list[Attempt]] = {}
    for attempt in by_attempt.values():
        grouped.setdefault(attempt.invocation, []).append(attempt)
    return grouped


def reaching(grouped: dict[str, list[Attempt]]) -> dict[str, int]:
    """Per invocation: how many of its attempts reached the database."""
    return {inv: sum(a.reached_database for a in group) for inv, group in grouped.items()}


@dataclass(frozen=True)
class ZombieSQL:
    """What a resumed zombie's attempts did in the database after they resumed."""

    reached: int  # statements that reached the database after the resume
    refused: int  # statements after the resume whose session was gone
    sqlstates: tuple[str, ...]  # of the refused ones
    #: SQLSTATEs of the statements that reached the database and that it answered with an
    #: error (a constraint, a deadline's fence: 22023)
    errors: tuple[str, ...] = ()

    def __str__(self) -> str:
        refused = f", {self.refused} refused ({', '.join(self.sqlstates)})" if self.refused else ""
        errors = f", answered with {', '.join(self.errors)}" if self.errors else ""
        return f"{self.reached} statement(s) reached the database after the resume{errors}{refused}"


def zombie_sql(
    lines: Iterable[dict[str, Any]], resumed: Iterable[tuple[int | None, float]]
) -> ZombieSQL:
    """What the zombies ``resumed`` (pid, resume time) ran after their resumes, together."""
    since = dict(resumed)
    after = [line for line in lines if line["pid"] in since and line["t"] >= since[line["pid"]]]
    refused = [line for line in after if not reached_database(line)]
    errors = [line for line in after if reached_database(line) and not line.get("ok")]
    return ZombieSQL(
        reached=len(after) - len(refused),
        refused=len(refused),
        sqlstates=tuple(sorted({str(line.get("sqlstate")) for line in refused})),
        errors=tuple(sorted({str(line.get("sqlstate")) for line in errors})),
    )
