"""Exactly once, judged per operation: the rule book the test kit and the chaos suite share.

An *operation* is one call a test sent with an idempotency key of its own, resolved to a definite
answer: *acknowledged* (200), *failed* (any other answer Restate gives for the key), or
*unknown* (no definite answer before the deadline: a failure of the test, never a pass). Then
the database says how many times each operation was applied, one row per operation, and each
operation is judged on its own:

- acknowledged and applied once: as promised;
- acknowledged and applied 0 times: a **lost update**;
- applied 2 or more times: a **duplicate**;
- failed yet applied: **applied though failed**;
- killed (the test killed its invocation, which ends it without its clean-up: work already on
  its way to COMMIT may still land) and applied 2 or more times: a duplicate; 0 or 1 is as
  the kill left it.

Per operation, never per aggregate: a net balance over several operations lets a duplicate of
one and a lost update of another cancel out; two rows cannot.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

#: A query: literal text, or composed with ``psycopg.sql``.
Query = str | sql.SQL | sql.Composed

#: Answers that say "not now" rather than anything about the invocation: ask again, with the
#: same idempotency key (Restate answers with the first invocation's result, or attaches to it).
AMBIGUOUS_STATUS = frozenset({502, 503, 504})

LOST_UPDATE = "lost update"
DUPLICATE = "duplicate"
APPLIED_THOUGH_FAILED = "applied though failed"


class Outcome(enum.StrEnum):
    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"  # 200: the effect is in, once
    FAILED = "failed"  # a definite error answer: the effect is not in
    KILLED = "killed"  # its invocation was killed: the effect is in once, or not at all
    UNKNOWN = "unknown"  # Restate did not answer before the deadline


def outcome_of(status: int) -> Outcome | None:
    """The definite outcome an HTTP status from the ingress gives, or None: ask again."""
    if status == 200:
        return Outcome.ACKNOWLEDGED
    if status in AMBIGUOUS_STATUS:
        return None
    return Outcome.FAILED


def anomaly(outcome: Outcome, applied: int, applications: int = 1) -> str | None:
    """What is wrong with one operation answered ``outcome`` and found ``applied`` times, or
    None. ``applications``: how many times the operation applies its effect when it runs once
    (a handler that makes two calls adds its amount twice); fewer than that for an acknowledged
    operation is one of its calls' lost update."""
    if applied > applications:
        return DUPLICATE
    if outcome == Outcome.KILLED:
        return None
    if outcome == Outcome.ACKNOWLEDGED and applied < applications:
        return LOST_UPDATE
    if outcome == Outcome.FAILED and applied:
        return APPLIED_THOUGH_FAILED
    return None


@dataclass
class Operation:
    """One call through the ingress, with its idempotency key and the row it should change.

    ``subject`` names the operation's own row in the query that judges it (a stock keeping
    unit, an order id): one row per operation. It defaults to the idempotency key."""

    target: str  # "<service>/<handler>" or "<object>/<key>/<handler>"
    body: Any
    idempotency_key: str
    subject: str
    outcome: Outcome = Outcome.PENDING
    status: int | None = None
    answer: str = ""
    invocation_id: str | None = None
    requests: int = 0  # how many times it was sent: 1 + the re-asks

    def __str__(self) -> str:
        return (
            f"{self.target} on {self.subject} (key {self.idempotency_key}, invocation "
            f"{self.invocation_id or '?'}): {self.outcome}"
            + (f" {self.status}" if self.status is not None else "")
        )


@dataclass
class Verdict:
    """Every operation judged on its own; ``problems`` is empty when each ran exactly once."""

    operations: list[Operation]
    applied: dict[str, int]  # times applied, by subject
    anomalies: list[str] = field(default_factory=list)
    unknown: list[Operation] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.anomalies + [f"no definite answer: {op}" for op in self.unknown]

    def counts(self) -> dict[str, int]:
        """Operations by outcome, and anomalies by kind: the figures a report states."""
        tally: dict[str, int] = {str(o): 0 for o in Outcome if o != Outcome.PENDING}
        for op in self.operations:
            tally[str(op.outcome)] = tally.get(str(op.outcome), 0) + 1
        for kind in (LOST_UPDATE, DUPLICATE, APPLIED_THOUGH_FAILED):
            tally[kind] = sum(1 for a in self.anomalies if a.startswith(kind + ":"))
        return tally

    def assert_exactly_once(self) -> None:
        """Fail (AssertionError) naming every operation that did not run exactly once."""
        assert not self.problems, "not exactly once:\n  " + "\n  ".join(self.problems)


def judge(operations: Sequence[Operation], applied: Mapping[str, int]) -> Verdict:
    """The verdict on ``operations``, given how many times each subject was applied (a subject
    missing from ``applied`` was applied 0 times). Pure: no database."""
    subjects = [op.subject for op in operations]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise ValueError(
            f"operations share a subject ({', '.join(repeated)}): each needs a row of its own, "
            "or its count cannot be told from another's"
        )
    verdict = Verdict(list(operations), {s: int(applied.get(s, 0)) for s in subjects})
    for op in operations:
        if op.outcome in (Outcome.UNKNOWN, Outcome.PENDING):
            verdict.unknown.append(op)
            continue
        times = verdict.applied[op.subject]
        kind = anomaly(op.outcome, times)
        if kind is not None:
            verdict.anomalies.append(f"{kind}: {op}, applied {times}x")
    return verdict


def read_applied(
    conn: psycopg.Connection[Any], query: Query, subjects: Iterable[str]
) -> dict[str, int]:
    """Run ``query`` with the list of subjects as its one parameter (``= ANY(%s)``); it returns
    one row per operation, ``(subject, times applied)``."""
    rows = conn.execute(query, (list(subjects),)).fetchall()
    counts: dict[str, int] = {}
    for row in rows:
        if len(row) != 2:
            raise ValueError(f"the query must return (subject, times applied), not {row!r}")
        subject, times = str(row[0]), int(row[1])
        if subject in counts:
            raise ValueError(f"the query returned two rows for {subject!r}: one per operation")
        counts[subject] = times
    return counts


def judge_rows(
    operations: Sequence[Operation], conn: psycopg.Connection[Any], query: Query
) -> Verdict:
    """Judge ``operations`` against the rows ``query`` reads (see ``read_applied``)."""
    return judge(operations, read_applied(conn, query, (op.subject for op in operations)))
