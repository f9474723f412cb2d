"""A cell's result and its verdict: what was observed, and the problems that make it fail.

``judge`` holds the whole rule book in one place: the fault must have struck, every operation
must have a definite answer, the ledger must decode, each expectation's anomaly must show (a
control) or must not (every other cell), a zombie must have reached the database after it
resumed (or, in the idle-timeout cell, been refused), and nothing may be left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chaos import attempts
from chaos.cells import Cell, Expect, Fault
from chaos.checker import Baseline, Ledger, Leftovers
from chaos.faults import FaultCounts


@dataclass
class Trial:
    """What a cell's provocation observed along the way."""

    earlier: Baseline = field(default_factory=Baseline)  # leftovers of earlier cells
    started: float = field(default_factory=time.time)  # wall clock, as Postgres and the trace
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CellResult:
    cell: Cell
    ledger: Ledger
    leftovers: Leftovers
    faults: FaultCounts
    seconds: float
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # what a particular cell counts
    #: Per invocation of the cell: how many of its attempts reached the database.
    reached_db: dict[str, int] = field(default_factory=dict)
    #: What the cell's zombies did in the database after they resumed (zombie cells).
    zombie_sql: attempts.ZombieSQL | None = None
    #: Writes found after the verdict (by a later cell's re-reading).
    late_writes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def outcome(self) -> str:
        """What was observed, in the words of the expectations."""
        ledger = self.ledger
        if not ledger.operations:
            return "not run"
        if ledger.unknown or ledger.unexplained_users or ledger.inconsistent_users:
            return "inconsistent"
        seen = []
        if ledger.duplicates:
            seen.append(str(Expect.DUPLICATE))
        if ledger.lost_updates:
            seen.append(str(Expect.LOST_UPDATE))
        if ledger.applied_though_failed:
            if ledger.failed != ledger.applied_though_failed:
                seen.append("applied though failed")
            elif self.cell.fault in (Fault.CANCELLED, Fault.CANCELLED_WHILE_FROZEN):
                seen.append("applied, call cancelled")
            else:
                seen.append(str(Expect.APPLIED_CALL_KILLED))
        if seen:
            return " + ".join(seen)
        if ledger.failed == ledger.operations:
            return Expect.NOT_APPLIED
        if ledger.failed:
            return Expect.AS_ANSWERED
        return Expect.EXACTLY_ONCE

    def as_dict(self) -> dict[str, Any]:
        c, ledger = self.cell, self.ledger
        reached = list(self.reached_db.values())
        return {
            "cell": c.id,
            "handlers": [h.name for h in c.handlers],
            "failpoint": c.point,
            "fault": str(c.fault),
            "expected": str(c.expect),
            "observed": str(self.outcome),
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "operations": ledger.operations,
            "acknowledged": ledger.acknowledged,
            "failed": ledger.failed,
            "unknown": ledger.unknown,
            "fault_events": self.faults.events(),
            "faults": self.faults.as_dict(),
            "duplicates": ledger.duplicates,
            "duplicated_operations": ledger.duplicated_operations,
            "lost_updates": ledger.lost_updates,
            "applied_though_failed": ledger.applied_though_failed,
            "unexplained_users": ledger.unexplained_users,
            "inconsistent_users": ledger.inconsistent_users,
            "applications": {str(k): v for k, v in ledger.applications().items()},
            "anomalies": [
                {"cell": c.id, "failpoint": c.point, **vars(a)} for a in ledger.anomalies
            ],
            "invocations_traced": len(reached),
            "attempts_reaching_db": _histogram(reached),
            "attempts_per_invocation": dict(sorted(self.reached_db.items())[:20]),
            "zombie_sql": None
            if self.zombie_sql is None
            else {
                "reached": self.zombie_sql.reached,
                "refused": self.zombie_sql.refused,
                "sqlstates": list(self.zombie_sql.sqlstates),
                "errors": list(self.zombie_sql.errors),
            },
            "late_writes": self.late_writes,
            "prepared_transactions_left": self.leftovers.prepared_transactions,
            "invocations_not_completed": self.leftovers.invocations_not_completed,
            "invocations_scheduled": self.leftovers.invocations_scheduled,
            "idle_in_transaction": self.leftovers.idle_in_transaction,
            "problems": self.problems,
            "notes": self.notes,
            "counts": self.counts,
            "mismatched_users": ledger.mismatched_users[:10],
            "not_completed": self.leftovers.not_completed[:10],
            "prepared_left": self.leftovers.prepared[:10],
            "why": c.why,
        }


def _histogram(values: list[int]) -> dict[str, int]:
    """{"1": invocations with one attempt that reached the database, "2": ..., ...}"""
    out: dict[str, int] = {}
    for v in sorted(values):
        out[str(v)] = out.get(str(v), 0) + 1
    return out


#: Cells whose zombie wakes after its call's deadline: the fence must refuse it (22023).
FENCED = frozenset({Fault.ZOMBIE_AFTER_TOKEN_EXPIRY, Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE})
FENCE_SQLSTATE = "22023"


def judge(result: CellResult) -> None:
    """Turn what a cell observed into its problems: an empty list is a PASS."""
    cell, ledger, left = result.cell, result.ledger, result.leftovers
    problems = result.problems
    expect = cell.expect
    if cell.injected(result.faults) < 1:
        problems.append(f"no {cell.fault} fault was injected")
    if ledger.unknown:
        problems.append(f"{ledger.unknown} operation(s) ended unknown")
    if expect == Expect.NOT_APPLIED and ledger.acknowledged:
        problems.append(f"{ledger.acknowledged} operation(s) acknowledged, none expected")
    if expect == Expect.APPLIED_CALL_KILLED and not ledger.failed:
        problems.append("no call was killed")
    if expect in (Expect.EXACTLY_ONCE, Expect.DUPLICATE, Expect.LOST_UPDATE) and ledger.failed:
        problems.append(f"{ledger.failed} operation(s) failed")
    if ledger.unexplained_users:
        problems.append(f"{ledger.unexplained_users} user(s) whose balance does not decode")
    if ledger.inconsistent_users:
        problems.append(
            f"{ledger.inconsistent_users} user(s) whose writes and applications disagree"
        )
    if expect == Expect.LOST_UPDATE and not ledger.lost_updates:
        problems.append(
            "negative control showed no lost update: the harness did not provoke the anomaly"
        )
    elif expect != Expect.LOST_UPDATE and ledger.lost_updates:
        problems.append(f"{ledger.lost_updates} lost update(s)")
    if expect == Expect.DUPLICATE and not ledger.duplicates:
        problems.append(
            "negative control showed no duplicate: the harness did not provoke the anomaly"
        )
    elif expect != Expect.DUPLICATE and ledger.duplicates:
        problems.append(
            f"{ledger.duplicates} duplicate application(s) of "
            f"{ledger.duplicated_operations} operation(s)"
        )
    if expect == Expect.APPLIED_CALL_KILLED:
        if ledger.applied_though_failed != ledger.failed:
            problems.append(
                f"{ledger.applied_though_failed} of {ledger.failed} killed call(s) applied: "
                "each committed before the kill"
            )
    elif ledger.applied_though_failed and expect != Expect.AT_MOST_ONCE:
        problems.append(f"{ledger.applied_though_failed} failed operation(s) applied")
    expected_kind = {
        Expect.DUPLICATE: "duplicate",
        Expect.LOST_UPDATE: "lost update",
        Expect.APPLIED_CALL_KILLED: "applied though failed",
        Expect.AT_MOST_ONCE: "applied though failed",
    }.get(expect)
    problems += [f"anomaly: {a}" for a in ledger.anomalies if a.kind != expected_kind][:5]
    if cell.fault.is_zombie:
        sql = result.zombie_sql
        if cell.fault == Fault.ZOMBIE_AFTER_IDLE_TIMEOUT:
            if sql is None or sql.reached or not sql.refused:
                problems.append(
                    f"the zombie's statement after resuming was not refused ({sql}): "
                    "the idle-in-transaction timeout was not what ended it"
                )
        elif sql is None or not sql.reached:
            problems.append(
                f"the zombie ran no SQL after it resumed ({sql}): two attempts never raced"
            )
        elif cell.fault in FENCED and FENCE_SQLSTATE not in sql.errors:
            problems.append(
                f"the zombie's transaction was not refused by its deadline's fence ({sql}): "
                "it resumed too early, or the fence let it through"
            )
    if left.prepared_transactions:
        problems.append(f"{left.prepared_transactions} prepared transaction(s) left")
    if left.idle_in_transaction:
        problems.append(f"{left.idle_in_transaction} idle-in-transaction session(s) left")
    if left.invocations_not_completed:
        problems.append(f"{left.invocations_not_completed} invocation(s) not completed")
