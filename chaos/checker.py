"""What must hold at the end of every scenario, measured.

* The ledger, per user: final credits = initial credits + the sum of the deltas of the
  acknowledged operations. Every operation on one user adds the same delta, so a difference is
  a whole number of operations: too many credits are *duplicates* (an operation applied twice),
  too few are *lost updates* (an acknowledged operation not applied). A difference that is not
  a whole number of deltas is counted as *unexplained*.
* Nothing left behind: no prepared transaction (``pg_prepared_xacts``), no idle-in-transaction
  session of the service, no invocation Restate has not completed (``sys_invocation``), except
  the ones that are *scheduled*: a delayed call (``idempotency.update`` schedules the expiry of
  its token) waits for its time on purpose; those are counted apart.
  Leftovers are polled for a few seconds first: a retry in backoff or a janitor may still be
  finishing its work; what is still there afterwards is reported.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from chaos.workload import Operation, Outcome, User
from dbpatterns.client import Admin
from dbpatterns.db import APPLICATION_NAME


@dataclass
class Ledger:
    users: int = 0
    operations: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    duplicates: int = 0
    lost_updates: int = 0
    unexplained_users: int = 0
    mismatched_users: list[str] = field(default_factory=list)


def check_ledger(database_url: str, users: Iterable[User], ops: Iterable[Operation]) -> Ledger:
    users = list(users)
    ops = list(ops)
    ledger = Ledger(users=len(users), operations=len(ops))
    applied: dict[str, int] = defaultdict(int)
    for op in ops:
        if op.outcome == Outcome.ACKNOWLEDGED:
            ledger.acknowledged += 1
            applied[op.user_id] += op.delta
        elif op.outcome == Outcome.FAILED:
            ledger.failed += 1
        else:
            ledger.unknown += 1
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT userid, credits FROM users WHERE userid = ANY(%s)",
            ([u.user_id for u in users],),
        ).fetchall()
    actual = {userid: int(credits) for userid, credits in rows}
    for user in users:
        expected = user.initial_credits + applied[user.user_id]
        difference = actual.get(user.user_id, 0) - expected
        if difference == 0:
            continue
        theirs = [op for op in ops if op.user_id == user.user_id]
        ledger.mismatched_users.append(
            f"{user.user_id} ({user.handler.name}, {len(theirs)} ops of +{user.delta}): "
            f"{actual.get(user.user_id)} credits, expected {expected}; invocations "
            + ", ".join(f"{op.invocation_id} ({op.outcome}, sent {op.requests}x)" for op in theirs)
        )
        whole, rest = divmod(abs(difference), user.delta)
        if rest:
            ledger.unexplained_users += 1
        elif difference > 0:
            ledger.duplicates += whole
        else:
            ledger.lost_updates += whole
    return ledger


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


def baseline(database_url: str, admin: Admin) -> Baseline:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT transaction::text FROM pg_prepared_xacts").fetchall()
    return Baseline(
        frozenset(str(xid) for (xid,) in rows),
        frozenset(str(i["id"]) for i in _invocations_not_completed(admin)),
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


def _invocations_not_completed(admin: Admin) -> list[dict[str, Any]]:
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
            i for i in _invocations_not_completed(admin) if i["id"] not in earlier.invocation_ids
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
