"""What must hold at the end of every scenario, measured per operation.

* The ledger, per operation. Each operation on a user adds its own power of 4 (``1, 4, 16,
  ...``; ``chaos.workload.BASE``), so the user's gain (final credits minus initial), written in
  base 4, has one digit per operation: how many times that operation was applied. The digits
  are read back exactly while no operation is applied more than three times, and the ``version``
  column (every credit write adds one) says whether that holds: the digits must add up to the
  number of credit writes, or the user is reported *inconsistent* (an operation applied four
  times or more carries into the next digit, and a write that overwrote another leaves more
  writes than digits). Then, for each operation on its own:

  - acknowledged and applied once: as promised;
  - acknowledged and applied 0 times: a **lost update**;
  - applied 2 or more times: a **duplicate** (``applied - 1`` extra applications);
  - failed (a definite error answer) yet applied: **applied though failed**.

  (The rule per operation is the test kit's, ``dbpatterns.testing.verdict.anomaly``: a user's
  own tests judge their operations by the same book.) A duplicate of one operation and a lost
  update of another on the same user are two digits,
  so they cannot cancel out, as they could in a net balance per user.
* Late writes: ``late_writes`` compares a later reading of a judged cell with its verdict; any
  operation whose count moved was written after the verdict (by a zombie the harness did not
  wait for) and is reported against that cell.
* Nothing left behind: no prepared transaction (``pg_prepared_xacts``), no idle-in-transaction
  session of the service, no invocation Restate has not completed (``sys_invocation``), except
  the ones that are *scheduled*: a delayed call (``idempotency.update`` schedules the expiry of
  its token) waits for its time on purpose; those are counted apart.
  Leftovers are polled for a few seconds first: a retry in backoff or a janitor may still be
  finishing its work; what is still there afterwards is reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from chaos.handlers import LedgerTable
from chaos.workload import BASE, Operation, User
from dbpatterns.service.db import APPLICATION_NAME
from dbpatterns.stack.client import Admin
from dbpatterns.testing.verdict import (
    DUPLICATE,
    LOST_UPDATE,
    Outcome,
    anomaly,
)


@dataclass(frozen=True)
class Reading:
    """One user's row at one moment; for a ledger that logs its writes, the log's row count and
    sum of amounts for that row (``logged``)."""

    credits: int
    version: int
    logged: tuple[int, int] | None = None


@dataclass(frozen=True)
class Anomaly:
    """One operation that was not applied as its answer says."""

    kind: str  # LOST_UPDATE, DUPLICATE or APPLIED_THOUGH_FAILED
    user_id: str
    handler: str
    idempotency_key: str
    invocation_id: str | None
    outcome: str
    applied: int

    def __str__(self) -> str:
        return (
            f"{self.kind}: {self.handler} on {self.user_id}, key {self.idempotency_key}, "
            f"invocation {self.invocation_id or '?'}: {self.outcome}, applied {self.applied}x"
        )


@dataclass
class Ledger:
    users: int = 0
    operations: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    #: Extra applications: an operation applied 3 times counts 2.
    duplicates: int = 0
    #: Operations applied more than once.
    duplicated_operations: int = 0
    lost_updates: int = 0
    applied_though_failed: int = 0
    #: Users whose row cannot be read back as digits (see the module docstring).
    unexplained_users: int = 0
    inconsistent_users: int = 0
    #: How many times each operation was applied, by idempotency key (undecodable users: absent).
    applied: dict[str, int] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    mismatched_users: list[str] = field(default_factory=list)

    def applications(self) -> dict[int, int]:
        """How many operations were applied 0, 1, 2, ... times."""
        histogram: dict[int, int] = {}
        for count in self.applied.values():
            histogram[count] = histogram.get(count, 0) + 1
        return dict(sorted(histogram.items()))


@dataclass(frozen=True)
class Decoded:
    """A user's row read back as one count per operation."""

    counts: list[int]  # empty when the row cannot be read as digits at all
    problem: str | None = None  # set: the counts are not to be trusted as they stand


def decode(user: User, reading: Reading) -> Decoded:
    """How many times each of ``user``'s operations was applied, read from ``reading``."""
    gain = reading.credits - user.initial_credits
    writes = reading.version - user.initial_version
    if gain < 0:
        return Decoded([], f"{-gain} credits below its initial balance")
    counts = []
    rest = gain
    for _ in user.operations:
        rest, digit = divmod(rest, BASE)
        counts.append(digit)
    if rest:
        return Decoded([], f"a gain of {gain} has digits beyond its {len(counts)} operations")
    if sum(counts) != writes:
        return Decoded(
            counts,
            f"{writes} credit write(s) but the balance reads as {sum(counts)} application(s): "
            "an operation applied 4+ times, or a write that overwrote another",
        )
    if reading.logged is not None and reading.logged != (writes, gain):
        rows, total = reading.logged
        return Decoded(
            counts,
            f"the write log holds {rows} row(s) adding {total}, but the row says {writes} "
            f"write(s) adding {gain}: a write and its log entry did not commit together",
        )
    return Decoded(counts)


def judge_ledger(users: Iterable[User], readings: Mapping[str, Reading]) -> Ledger:
    """The verdict per operation, from one reading of every user (pure: no database)."""
    users = list(users)
    ops = [op for user in users for op in user.operations]
    ledger = Ledger(users=len(users), operations=len(ops))
    for op in ops:
        if op.outcome == Outcome.ACKNOWLEDGED:
            ledger.acknowledged += 1
        elif op.outcome == Outcome.FAILED:
            ledger.failed += 1
        else:
            ledger.unknown += 1
    for user in users:
        reading = readings.get(user.user_id)
        if reading is None:
            ledger.unexplained_users += 1
            ledger.mismatched_users.append(f"{user.user_id}: the row is gone")
            continue
        decoded = decode(user, reading)
        if decoded.problem is not None:
            ledger.mismatched_users.append(f"{user.user_id}: {decoded.problem}; {_describe(user)}")
            if not decoded.counts:
                ledger.unexplained_users += 1
                continue
            ledger.inconsistent_users += 1
        for op, applied in zip(user.operations, decoded.counts, strict=True):
            ledger.applied[op.idempotency_key] = applied
            kind = _anomaly(op, applied)
            if kind is None:
                continue
            ledger.anomalies.append(
                Anomaly(
                    kind,
                    user.user_id,
                    op.handler.name,
                    op.idempotency_key,
                    op.invocation_id,
                    str(op.outcome),
                    applied,
                )
            )
            if kind == DUPLICATE:
                ledger.duplicates += applied - op.handler.applications
                ledger.duplicated_operations += 1
            elif kind == LOST_UPDATE:
                ledger.lost_updates += 1
            else:
                ledger.applied_though_failed += 1
    return ledger


def _anomaly(op: Operation, applied: int) -> str | None:
    """``applied``: how many times the operation's amount was added; an operation of a handler
    that makes ``k`` calls adds it ``k`` times when applied once (``CreditHandler.applications``),
    so fewer than ``k`` for an acknowledged one is a call's lost update."""
    return anomaly(op.outcome, applied, op.handler.applications)


def _describe(user: User) -> str:
    return "ops " + ", ".join(
        f"+{op.delta} {op.handler.name} {op.outcome} ({op.invocation_id}, sent {op.requests}x)"
        for op in user.operations
    )


def read_balances(database_url: str, users: Iterable[User]) -> dict[str, Reading]:
    """Every user's row now (and its write log, where its ledger keeps one)."""
    by_ledger: dict[LedgerTable, list[str]] = {}
    for user in users:
        by_ledger.setdefault(user.ledger, []).append(user.user_id)
    readings: dict[str, Reading] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for ledger, ids in by_ledger.items():
            readings.update(_read(conn, ledger, ids))
    return readings


def _read(conn: psycopg.Connection[Any], ledger: LedgerTable, ids: list[str]) -> dict[str, Reading]:
    rows = conn.execute(
        sql.SQL("SELECT {key}, {amount}, {version} FROM {table} WHERE {key} = ANY(%s)").format(
            key=sql.Identifier(ledger.key),
            amount=sql.Identifier(ledger.amount),
            version=sql.Identifier(ledger.version),
            table=sql.Identifier(ledger.table),
        ),
        (ids,),
    ).fetchall()
    logged: dict[str, tuple[int, int]] = {}
    if ledger.log is not None:
        table, key, amount = (sql.Identifier(n) for n in ledger.log)
        logged = {
            k: (int(n), int(total))
            for k, n, total in conn.execute(
                sql.SQL(
                    "SELECT {key}, count(*), sum({amount}) FROM {table} "
                    "WHERE {key} = ANY(%s) GROUP BY {key}"
                ).format(key=key, amount=amount, table=table),
                (ids,),
            ).fetchall()
        }
    return {
        k: Reading(int(a), int(v), logged.get(k, (0, 0)) if ledger.log is not None else None)
        for k, a, v in rows
    }


def check_ledger(database_url: str, users: Iterable[User]) -> Ledger:
    users = list(users)
    return judge_ledger(users, read_balances(database_url, users))


def late_writes(verdict: Ledger, later: Ledger) -> list[str]:
    """Operations whose count changed between a cell's verdict and a later reading."""
    return [
        f"operation {key}: applied {count}x at the verdict, {later.applied.get(key)}x later"
        for key, count in verdict.applied.items()
        if later.applied.get(key) != count
    ]


@dataclass
class Leftovers:
    prepared_transactions: int = 0
    idle_in_transaction: int = 0
    invocations_not_completed: int = 0  # not completed and not merely scheduled for later
    invocations_scheduled: int = 0
    not_completed: list[str] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)  # gid (xid, prepared at)

    def clean(self) -> bool:
        return not (
            self.prepared_transactions or self.idle_in_transaction or self.invocations_not_completed
        )


@dataclass(frozen=True)
class Baseline:
    """What was already left when a scenario started (by an earlier, failed one): a scenario is
    judged on what *it* leaves behind, and an earlier failure does not fail every later one."""

    prepared_xids: frozenset[str] = frozenset()
    invocation_ids: frozenset[str] = frozenset()
    scheduled: int = 0  # of those invocations, delayed calls waiting for their time


def baseline(database_url: str, admin: Admin) -> Baseline:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT transaction::text FROM pg_prepared_xacts").fetchall()
    invocations = invocations_not_completed(admin)
    return Baseline(
        frozenset(str(xid) for (xid,) in rows),
        frozenset(str(i["id"]) for i in invocations),
        sum(1 for i in invocations if i["status"] == SCHEDULED),
    )


def _database_leftovers(database_url: str, earlier: Baseline) -> tuple[list[str], int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        prepared = conn.execute(
            "SELECT gid, transaction::text, prepared FROM pg_prepared_xacts "
            "WHERE NOT transaction::text = ANY(%s) ORDER BY prepared",
            (sorted(earlier.prepared_xids),),
        ).fetchall()
        idle = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND state LIKE 'idle in transaction%%'",
            (APPLICATION_NAME,),
        ).fetchone()
    gids = [f"{gid} (xid {xid}, prepared {at:%H:%M:%S})" for gid, xid, at in prepared]
    return gids, int(idle[0]) if idle else 0


def invocations_not_completed(admin: Admin) -> list[dict[str, Any]]:
    """Restate's invocations that have not completed (scheduled ones included)."""
    return admin.query(
        "SELECT id, target, status, retry_count, last_failure FROM sys_invocation "
        "WHERE status != 'completed'"
    )


SCHEDULED = "scheduled"


def check_leftovers(
    database_url: str, admin: Admin, settle: float = 15.0, earlier: Baseline = Baseline()
) -> Leftovers:
    """Poll until nothing new is left or ``settle`` seconds pass; report what remains.

    Prepared transactions and invocations in ``earlier`` (left before the scenario) are not
    counted; idle-in-transaction sessions always are."""
    deadline = time.monotonic() + settle
    while True:
        prepared, idle = _database_leftovers(database_url, earlier)
        everything = [
            i for i in invocations_not_completed(admin) if i["id"] not in earlier.invocation_ids
        ]
        invocations = [i for i in everything if i["status"] != SCHEDULED]
        leftovers = Leftovers(
            prepared_transactions=len(prepared),
            prepared=prepared,
            idle_in_transaction=idle,
            invocations_not_completed=len(invocations),
            invocations_scheduled=len(everything) - len(invocations),
            not_completed=[
                f"{i['id']} {i['target']} {i['status']} retries={i.get('retry_count')} "
                f"{(i.get('last_failure') or '')[:160]}"
                for i in invocations
            ],
        )
        if leftovers.clean() or time.monotonic() >= deadline:
            return leftovers
        time.sleep(0.25)
