"""The cells of the chaos table: (handler, failpoint, fault) -> the outcome the pattern promises.

A cell provokes its fault at a named failpoint (or, for faults of restate-server and Postgres,
while operations are held at one), resolves every operation, and then measures: duplicates,
lost updates, leftovers. Its *expectation* says what the pattern promises:

* ``exactly once``: no duplicate, no lost update, nothing left behind;
* ``duplicate`` (a negative control): the anomaly the pattern's docstring admits MUST show, or
  the harness failed to provoke the fault it claims to test. Such a cell that shows no
  duplicate fails.

The kill and zombie cells are generated from the failpoint catalogue (``failpoints.CATALOGUE``),
so a failpoint added to a handler gets its cells without touching this file.

Faults:

* ``kill``: the failpoint SIGKILLs the service process once; the retry runs in the standby.
* ``zombie``: the failpoint SIGSTOPs the process once; the harness cuts Restate off from it,
  Restate retries the invocation in the standby, and when that retry has finished (or a time
  limit passed) the paused process is resumed and carries on: two attempts of one invocation
  touch the database.
* ``zombie-after-token-expiry``: the same, but the paused process resumes only after the
  idempotency token of the retry has expired.
* ``restate-restart`` / ``postgres-restart`` / ``terminate-connections``: operations are held at
  a failpoint (``sleep``) while restate-server is SIGKILLed and started again, Postgres is shut
  down immediately and started again, or the service's sessions are terminated.
* ``kill-storm``: many operations on the exactly-once handlers, while every failpoint of those
  handlers kills the process at random (a few percent of the hits).
* ``mixed-storm`` (soak): the same with every kind of fault, at random.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from chaos.checker import (
    Baseline,
    Ledger,
    Leftovers,
    baseline,
    check_ledger,
    check_leftovers,
)
from chaos.supervisor import ChaosStack, FaultCounts
from chaos.workload import (
    CREDIT_HANDLERS,
    EXACTLY_ONCE_HANDLERS,
    IDEMPOTENCY_UPDATE,
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
    Operation,
    User,
    Workload,
    create_users,
)
from dbpatterns import failpoints, janitor
from dbpatterns.stack import wait_until


class Fault(enum.StrEnum):
    KILL = "kill"
    ZOMBIE = "zombie"
    ZOMBIE_AFTER_TOKEN_EXPIRY = "zombie-after-token-expiry"
    RESTATE_RESTART = "restate-restart"
    POSTGRES_RESTART = "postgres-restart"
    TERMINATE_CONNECTIONS = "terminate-connections"
    INVOCATION_KILLED = "invocation-killed"
    ZOMBIE_BETWEEN_COMMIT_ATTEMPTS = "zombie-between-commit-attempts"
    KILL_STORM = "kill-storm"
    MIXED_STORM = "mixed-storm"


class ZombieCut(enum.StrEnum):
    """How Restate loses a paused process's attempt in a zombie cell."""

    #: Restate's side stays open and silent: Restate gives up by its own timeouts (inactivity +
    #: abort + its fixed drain, about 8 s with the harness's settings), then the harness resets
    #: that side so the retry reaches the standby. The faithful way, and the default.
    RESTATE_TIMEOUT = "restate-timeout"
    #: Restate's side is reset the moment the process pauses (a network partition): Restate
    #: retries within its backoff. Faster; the zombie sees the same thing either way.
    AT_ONCE = "at-once"


class Expect(enum.StrEnum):
    EXACTLY_ONCE = "exactly once"
    DUPLICATE = "duplicate"
    NOT_APPLIED = "not applied"  # the operation fails and leaves nothing behind


#: The failpoint ``idempotency.update`` needs for its negative control: in the durable step,
#: before the transaction claims the token (a zombie paused there claims it after expiry).
IDEMPOTENCY_BEFORE_CLAIM = "idempotency.update.before-claim"

#: Where operations are held (``sleep``) while restate-server or Postgres is restarted: a point
#: inside the database transaction where the handler has one, else just before the write.
HOLD_POINTS = {
    KEYED_UPDATE.name: "keyed.update.before-write",
    KEYED_UPDATE_CONDITIONAL.name: "keyed.updateConditional.before-write",
    IDEMPOTENCY_UPDATE.name: "idempotency.update.before-commit",
    # Prepared (and journaled) but not committed: the prepared transaction must outlive the
    # fault (it survives a Postgres restart and the end of its session) and be committed after.
    TWO_PHASE_COMMIT_UPDATE.name: "twoPhaseCommit.update.before-commit",
}
HOLD_MS = 1500

#: ``twoPhaseCommit``'s prepare step, before it rolls back a leftover prepared transaction of
#: an earlier attempt: a zombie frozen there and resumed after the invocation committed
#: prepares a second transaction under the same gid.
TWO_PC_BEFORE_CLEARING_LEFTOVER = "twoPhaseCommit.update.before-clearing-leftover"
TWO_PC_BEFORE_COMMIT = "twoPhaseCommit.update.before-commit"
TWO_PC_AFTER_COMMIT = "twoPhaseCommit.update.after-commit"
#: Stands in for the point of a handler that declares none (its cells then fail, saying so).
NONE_DECLARED = "(no failpoint declared)"


@dataclass(frozen=True)
class Cell:
    """One scenario of the table."""

    handlers: tuple[CreditHandler, ...]
    fault: Fault
    point: str | None
    expect: Expect
    operations: int = 1
    why: str = ""

    @property
    def handler(self) -> CreditHandler:
        return self.handlers[0]

    @property
    def where(self) -> str:
        """The point without its handler prefix (``after-commit``), or "-"."""
        if self.point is None:
            return "-"
        prefix = self.handler.name + "."
        return self.point.removeprefix(prefix)

    @property
    def id(self) -> str:
        what = (
            "+".join(h.name for h in self.handlers) if len(self.handlers) > 1 else self.handler.name
        )
        return f"{what}@{self.where}/{self.fault}"


def points_of(handler: CreditHandler) -> list[str]:
    """The handler's failpoints, in the order its code declares them."""
    return [name for name in failpoints.CATALOGUE if name.startswith(handler.name + ".")]


def expectation(handler: CreditHandler, point: str, fault: Fault) -> tuple[Expect, str]:
    """What the pattern promises at ``point`` under ``fault``, and why."""
    if handler.exactly_once:
        promise = failpoints.CATALOGUE.get(point, "").partition(" -- ")[2] or "its guarantee"
        if fault == Fault.KILL:
            return Expect.EXACTLY_ONCE, promise
        return Expect.EXACTLY_ONCE, "the retry and the zombie both run; adds once all the same"
    where = point.removeprefix(handler.name + ".")
    if fault == Fault.KILL and where == "after-commit":
        return Expect.DUPLICATE, "committed, not journaled: the retry writes again"
    if fault == Fault.KILL:
        return Expect.EXACTLY_ONCE, "nothing committed before the crash: the retry writes once"
    return Expect.DUPLICATE, "the retry and the zombie both write"


def fault_cells(handlers: list[CreditHandler] | None = None) -> list[Cell]:
    """Kill and zombie at every failpoint of every credit handler."""
    cells = []
    for handler in handlers or CREDIT_HANDLERS:
        # A handler that declares no failpoint yet still gets its cells: they fail, saying so.
        for point in points_of(handler) or [f"{handler.name}.{NONE_DECLARED}"]:
            for fault in (Fault.KILL, Fault.ZOMBIE):
                if point == IDEMPOTENCY_BEFORE_CLAIM and fault == Fault.ZOMBIE:
                    continue  # its zombie cell is the token-expiry control (``token_expiry_cell``)
                expect, why = expectation(handler, point, fault)
                cells.append(Cell((handler,), fault, point, expect, why=why))
    return cells


def token_expiry_cell() -> Cell:
    return Cell(
        (IDEMPOTENCY_UPDATE,),
        Fault.ZOMBIE_AFTER_TOKEN_EXPIRY,
        IDEMPOTENCY_BEFORE_CLAIM,
        Expect.DUPLICATE,
        why="the token is gone when the zombie claims it: the window the TTL leaves open",
    )


def hold_point(handler: CreditHandler) -> str:
    if handler.name in HOLD_POINTS:
        return HOLD_POINTS[handler.name]
    points = points_of(handler)
    return points[0] if points else f"{handler.name}.{NONE_DECLARED}"


def restart_cells(operations: int = 4) -> list[Cell]:
    """Every credit handler across the faults of the other parts, held where nothing has
    committed yet; plus ``keyed.update`` held after its commit while restate-server dies (the
    same hole as a crash of the service there, from the other side)."""
    cells = [
        Cell(
            (KEYED_UPDATE,),
            Fault.RESTATE_RESTART,
            "keyed.update.after-commit",
            Expect.DUPLICATE,
            1,
            "restate-server dies before it records the committed step: the retry writes again",
        )
    ]
    for fault in (Fault.RESTATE_RESTART, Fault.POSTGRES_RESTART, Fault.TERMINATE_CONNECTIONS):
        for handler in CREDIT_HANDLERS:
            why = "held before its commit: nothing committed when the fault strikes"
            cells.append(
                Cell((handler,), fault, hold_point(handler), Expect.EXACTLY_ONCE, operations, why)
            )
    return cells


def janitor_cell() -> Cell:
    return Cell(
        (TWO_PHASE_COMMIT_UPDATE,),
        Fault.INVOCATION_KILLED,
        "twoPhaseCommit.update.before-commit",
        Expect.NOT_APPLIED,
        why="killed through Restate while prepared: no handler code runs any more; the janitor "
        "(`dbpatterns janitor`) rolls the prepared transaction back",
    )


def stranger_commit_cell() -> Cell:
    return Cell(
        (TWO_PHASE_COMMIT_UPDATE,),
        Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS,
        TWO_PC_BEFORE_CLEARING_LEFTOVER,
        Expect.EXACTLY_ONCE,
        why="a zombie prepares again under the gid after the retry's COMMIT PREPARED, whose "
        "step was not journaled (killed); the next attempt's COMMIT PREPARED must not commit "
        "the zombie's transaction",
    )


def kill_storm_cell(operations: int = 200) -> Cell:
    return Cell(
        tuple(EXACTLY_ONCE_HANDLERS),
        Fault.KILL_STORM,
        None,
        Expect.EXACTLY_ONCE,
        operations,
        why="every failpoint of the exactly-once handlers kills at random",
    )


def mixed_storm_cell(operations: int) -> Cell:
    return Cell(
        tuple(EXACTLY_ONCE_HANDLERS),
        Fault.MIXED_STORM,
        None,
        Expect.EXACTLY_ONCE,
        operations,
        why="kills, zombies, restate-server and Postgres restarts, terminated sessions",
    )


def quick_cells(storm_operations: int = 200) -> list[Cell]:
    """Every cell once, then the random-kill storm."""
    return [
        *fault_cells(),
        token_expiry_cell(),
        *restart_cells(),
        janitor_cell(),
        stranger_commit_cell(),
        kill_storm_cell(storm_operations),
    ]


# --- running a cell ----------------------------------------------------------------------------


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

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def outcome(self) -> str:
        """What was observed, in the words of the expectation."""
        if not self.ledger.operations:
            return "not run"
        if self.ledger.duplicates and not self.ledger.lost_updates:
            return Expect.DUPLICATE
        if self.ledger.lost_updates:
            return "lost update"
        if self.ledger.unexplained_users or self.ledger.unknown:
            return "inconsistent"
        if self.ledger.operations and self.ledger.failed == self.ledger.operations:
            return Expect.NOT_APPLIED
        return Expect.EXACTLY_ONCE

    def as_dict(self) -> dict[str, Any]:
        c = self.cell
        return {
            "cell": c.id,
            "handlers": [h.name for h in c.handlers],
            "failpoint": c.point,
            "fault": str(c.fault),
            "expected": str(c.expect),
            "observed": str(self.outcome),
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "operations": self.ledger.operations,
            "acknowledged": self.ledger.acknowledged,
            "failed": self.ledger.failed,
            "unknown": self.ledger.unknown,
            "faults_injected": self.faults.total(),
            "faults": self.faults.as_dict(),
            "duplicates": self.ledger.duplicates,
            "lost_updates": self.ledger.lost_updates,
            "unexplained_users": self.ledger.unexplained_users,
            "prepared_transactions_left": self.leftovers.prepared_transactions,
            "invocations_not_completed": self.leftovers.invocations_not_completed,
            "invocations_scheduled": self.leftovers.invocations_scheduled,
            "idle_in_transaction": self.leftovers.idle_in_transaction,
            "problems": self.problems,
            "notes": self.notes,
            "counts": self.counts,
            "mismatched_users": self.ledger.mismatched_users[:10],
            "not_completed": self.leftovers.not_completed[:10],
            "prepared_left": self.leftovers.prepared[:10],
            "why": c.why,
        }


@dataclass
class Trial:
    """What a cell's provocation observed along the way."""

    earlier: Baseline = field(default_factory=Baseline)  # leftovers of earlier cells
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class CellRunner:
    """Runs cells one after another on one chaos stack."""

    def __init__(
        self,
        stack: ChaosStack,
        workload: Workload,
        *,
        seed: int | None = None,
        zombie_cut: ZombieCut = ZombieCut.RESTATE_TIMEOUT,
    ) -> None:
        self.stack = stack
        self.workload = workload
        self.random = random.Random(seed)
        self.zombie_cut = zombie_cut

    def run(self, cell: Cell) -> CellResult:
        stack = self.stack
        stack.failpoints.clear()
        stack.wait_ready()
        before = stack.faults.minus(FaultCounts())
        earlier = baseline(stack.database_url, stack.admin)
        started = time.monotonic()
        trial = Trial(earlier)
        if earlier.prepared_xids or earlier.invocation_ids:
            trial.notes.append(
                f"left by earlier cells, not counted here: {len(earlier.prepared_xids)} prepared "
                f"transaction(s), {len(earlier.invocation_ids)} invocation(s) not completed"
            )
        users: list[User] = []
        ops: list[Operation] = []
        missing = [p for p in self._points_needed(cell) if p not in failpoints.CATALOGUE]
        if missing:
            trial.problems.append(
                f"failpoint(s) {', '.join(missing)} not declared by the pattern code: "
                "this cell cannot be provoked"
            )
        else:
            try:
                users, ops = self._provoke(cell, trial)
            finally:
                stack.failpoints.clear()
        ledger = check_ledger(stack.database_url, users, ops)
        leftovers = check_leftovers(stack.database_url, stack.admin, earlier=earlier)
        faults = stack.faults.minus(before)
        result = CellResult(
            cell,
            ledger,
            leftovers,
            faults,
            time.monotonic() - started,
            trial.problems,
            trial.notes,
            trial.counts,
        )
        self._judge(result)
        return result

    @staticmethod
    def _points_needed(cell: Cell) -> list[str]:
        if cell.fault == Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS:
            return [TWO_PC_BEFORE_CLEARING_LEFTOVER, TWO_PC_BEFORE_COMMIT, TWO_PC_AFTER_COMMIT]
        if cell.point is not None:
            return [cell.point]
        # A storm needs every handler it drives to declare failpoints, or it proves nothing.
        return [f"{h.name}.{NONE_DECLARED}" for h in cell.handlers if not points_of(h)]

    def _provoke(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        provoke: dict[Fault, Callable[[Cell, Trial], tuple[list[User], list[Operation]]]]
        provoke = {
            Fault.KILL: self._kill,
            Fault.ZOMBIE: self._zombie,
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: self._zombie,
            Fault.RESTATE_RESTART: self._held,
            Fault.POSTGRES_RESTART: self._held,
            Fault.TERMINATE_CONNECTIONS: self._held,
            Fault.INVOCATION_KILLED: self._invocation_killed,
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: self._zombie_between_commit_attempts,
            Fault.KILL_STORM: self._storm,
            Fault.MIXED_STORM: self._storm,
        }
        return provoke[cell.fault](cell, trial)

    def _users_and_ops(self, cell: Cell) -> tuple[list[User], list[Operation]]:
        users = create_users(self.stack.database_url, cell.handler, cell.operations)
        return users, [Operation(u.handler, u.user_id, u.delta) for u in users]

    # --- kill ------------------------------------------------------------------------------------

    def _kill(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        assert cell.point is not None
        users, ops = self._users_and_ops(cell)
        self.stack.failpoints.set({cell.point: "1*kill"})
        self.workload.run_all(ops)
        if self.stack.failpoints.remaining(cell.point) != 0:
            trial.problems.append(f"the failpoint {cell.point} was never reached")
        return users, ops

    # --- zombie ----------------------------------------------------------------------------------

    def _zombie(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        assert cell.point is not None
        stack = self.stack
        users, ops = self._users_and_ops(cell)
        earlier = self._invocations_not_completed()
        stack.reset_zombie_connections_at_once = self.zombie_cut == ZombieCut.AT_ONCE
        stack.failpoints.set({cell.point: "1*pause"})
        running = self.workload.start(ops)
        try:
            zombie = stack.wait_for_zombie(timeout=30)
        except TimeoutError:
            trial.problems.append(f"the failpoint {cell.point} never paused the service")
            return users, running.wait()
        finally:
            stack.reset_zombie_connections_at_once = True
        paused = time.monotonic()
        if not zombie.restate_side_reset:
            failure = self._wait_restate_gave_up(earlier, timeout=40)
            if failure is None:
                trial.problems.append("Restate did not give up on the paused attempt within 40 s")
            else:
                trial.notes.append(
                    f"Restate gave up on the paused attempt after "
                    f"{time.monotonic() - paused:.1f} s: {failure}"
                )
            stack.reset_restate_side(zombie)
        # The retry runs in the standby. A zombie holding a lock the retry needs keeps it
        # waiting until Postgres ends the zombie's idle transaction; give it that long and more.
        running.wait(timeout=30)
        retry_finished = running.done()
        trial.notes.append(
            f"retry {'finished' if retry_finished else 'still running'} "
            f"{time.monotonic() - paused:.1f} s after the pause "
            f"({zombie.connections_cut} connection(s) from Restate cut)"
        )
        if cell.fault == Fault.ZOMBIE_AFTER_TOKEN_EXPIRY:
            if not self._wait_tokens_expired(timeout=30):
                trial.problems.append("the idempotency token did not expire")
            else:
                trial.notes.append("the retry's idempotency token had expired")
        log_mark = _log_size(zombie.slot.service.log_path)
        stack.resume_zombie(zombie, linger=2.0)
        running.wait()
        woke = [
            line
            for line in _log_since(zombie.slot.service.log_path, log_mark)
            if not line.startswith("---")
        ]
        trial.notes.append("zombie after resume: " + (" | ".join(woke[-4:]) or "(no log lines)"))
        return users, ops

    def _invocations_not_completed(self) -> set[str]:
        rows = self.stack.admin.query("SELECT id FROM sys_invocation WHERE status != 'completed'")
        return {str(r["id"]) for r in rows}

    def _wait_restate_gave_up(self, earlier: set[str], timeout: float) -> str | None:
        """Until Restate records the failure of an attempt of this cell's invocation (and
        schedules another): the failure's text."""
        seen: list[str] = []

        def gave_up() -> bool:
            rows = self.stack.admin.query(
                "SELECT id, last_failure FROM sys_invocation "
                "WHERE status != 'completed' AND last_failure IS NOT NULL"
            )
            seen[:] = [str(r["last_failure"]) for r in rows if r["id"] not in earlier]
            return bool(seen)

        return seen[0][:200] if wait_until(gave_up, timeout, interval=0.2) else None

    def _wait_tokens_expired(self, timeout: float) -> bool:
        def empty() -> bool:
            with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM user_idempotency").fetchone()
            return row is not None and row[0] == 0

        return wait_until(empty, timeout, interval=0.2)

    # --- faults while operations are held ------------------------------------------------------

    def _held(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        point = cell.point
        assert point is not None
        stack = self.stack
        users, ops = self._users_and_ops(cell)
        stack.failpoints.set({point: f"{len(ops)}*sleep({HOLD_MS})"})
        running = self.workload.start(ops)
        if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
            trial.problems.append(f"the operations did not all reach {point}")
        else:
            trial.notes.append(f"{len(ops)} operation(s) held at {point} when the fault struck")
        if cell.fault == Fault.RESTATE_RESTART:
            stack.restart_restate()
        elif cell.fault == Fault.POSTGRES_RESTART:
            stack.restart_postgres()
        else:
            if stack.terminate_service_connections() == 0:
                trial.problems.append("no service session to terminate")
        running.wait()
        return users, ops

    # --- an invocation killed through Restate, then the janitor ----------------------------------

    def _invocation_killed(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        """Hold the operation at ``cell.point``, kill its invocation (no handler code runs any
        more, not even a cleanup), then sweep as ``dbpatterns janitor --once --grace 0`` would."""
        point = cell.point
        assert point is not None
        stack = self.stack
        users, ops = self._users_and_ops(cell)
        earlier = self._invocations_not_completed()
        stack.failpoints.set({point: f"1*sleep({HOLD_MS * 4})"})
        running = self.workload.start(ops)
        if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
            trial.problems.append(f"the operation did not reach {point}")
            return users, running.wait()
        killed = sorted(self._invocations_not_completed() - earlier)
        for invocation in killed:
            stack.kill_invocation(invocation)
        running.wait()
        prepared = check_leftovers(
            stack.database_url, stack.admin, settle=0, earlier=trial.earlier
        ).prepared
        trial.counts["prepared_before_janitor"] = len(prepared)
        verdicts = [
            v for v in janitor.sweep(stack.settings, grace=timedelta(0)) if v.invocation in killed
        ]
        trial.counts["janitor_rolled_back"] = sum(v.action == "rolled back" for v in verdicts)
        trial.notes += [f"janitor: {v}" for v in verdicts]
        trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in ops]
        return users, ops

    # --- a zombie between two attempts of twoPhaseCommit's commit step ----------------------------

    def _zombie_between_commit_attempts(
        self, cell: Cell, trial: Trial
    ) -> tuple[list[User], list[Operation]]:
        """Attempt A freezes in the prepare step before it clears leftovers. Attempt B, in the
        standby, prepares, commits, and dies before Restate records the commit. While attempt C
        is held before its COMMIT PREPARED, A wakes: it finds nothing to clear under the gid
        (B committed), adds the credits again and prepares that under the same gid. Then C runs
        COMMIT PREPARED gid: whatever it commits must not be A's transaction."""
        point = cell.point
        assert point is not None
        stack = self.stack
        users, ops = self._users_and_ops(cell)
        killed_before = stack.faults.service_killed
        stack.failpoints.set(
            {
                point: "1*pause",
                TWO_PC_BEFORE_COMMIT: f"2*sleep({HOLD_MS * 2})",
                TWO_PC_AFTER_COMMIT: "1*kill",
            }
        )
        running = self.workload.start(ops)
        try:
            zombie = stack.wait_for_zombie(timeout=30)
        except TimeoutError:
            trial.problems.append(f"the failpoint {point} never paused the service")
            return users, running.wait()
        c_is_held = wait_until(
            lambda: (
                stack.faults.service_killed > killed_before
                and stack.failpoints.remaining(TWO_PC_BEFORE_COMMIT) == 0
            ),
            40,
            0.02,
        )
        if not c_is_held:
            trial.problems.append("attempt B was not killed after its commit, or C never came")
        else:
            trial.notes.append("B committed and died; C is held before COMMIT PREPARED")
        stack.resume_zombie(zombie, linger=HOLD_MS * 2 / 1000)
        running.wait()
        trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in ops]
        return users, ops

    # --- storms ----------------------------------------------------------------------------------

    def _storm(self, cell: Cell, trial: Trial) -> tuple[list[User], list[Operation]]:
        stack = self.stack
        rnd = self.random
        users: list[User] = []
        per_handler = max(2, min(16, cell.operations // (8 * len(cell.handlers)) or 2))
        for handler in cell.handlers:
            users += create_users(stack.database_url, handler, per_handler)
        points = [p for h in cell.handlers for p in points_of(h)]
        kill_percent = 2.0
        actions = {p: f"{kill_percent:g}%kill" for p in points}
        mixed = cell.fault == Fault.MIXED_STORM
        if mixed:
            for p in rnd.sample(points, k=max(1, len(points) // 3)):
                actions[p] = "1%pause"
            stack.auto_resume_after = 4.0
        ops = [
            Operation(u.handler, u.user_id, u.delta)
            for u in (rnd.choice(users) for _ in range(cell.operations))
        ]
        stack.failpoints.set(actions)
        chaos = _HarnessChaos(stack, rnd) if mixed else None
        try:
            if chaos is not None:
                chaos.start()
            self.workload.run_all(ops)
        finally:
            if chaos is not None:
                chaos.stop()
                trial.notes.append(f"harness faults: {chaos.injected}")
            stack.failpoints.clear()
            if mixed:
                stack.auto_resume_after = 0.0  # wake any zombie left now
                wait_until(lambda: not stack.zombies, 10)
                stack.auto_resume_after = None
        trial.notes.append(
            f"{len(users)} users, failpoints: {len(points)} at {kill_percent:g}% kill"
        )
        return users, ops

    # --- judging ---------------------------------------------------------------------------------

    @staticmethod
    def _judge(result: CellResult) -> None:
        cell, ledger, left, faults = result.cell, result.ledger, result.leftovers, result.faults
        problems = result.problems
        wanted = {
            Fault.KILL: faults.service_killed,
            Fault.ZOMBIE: min(faults.service_paused, faults.zombies_resumed),
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: min(faults.service_paused, faults.zombies_resumed),
            Fault.RESTATE_RESTART: faults.restate_killed,
            Fault.POSTGRES_RESTART: faults.postgres_restarted,
            Fault.TERMINATE_CONNECTIONS: faults.connections_terminated,
            Fault.INVOCATION_KILLED: faults.invocations_killed,
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: min(
                faults.service_paused, faults.zombies_resumed, faults.service_killed
            ),
            Fault.KILL_STORM: faults.service_killed,
            Fault.MIXED_STORM: faults.total(),
        }[cell.fault]
        if wanted < 1:
            problems.append(f"no {cell.fault} fault was injected")
        if ledger.unknown:
            problems.append(f"{ledger.unknown} operation(s) ended unknown")
        if cell.expect == Expect.NOT_APPLIED and ledger.acknowledged:
            problems.append(f"{ledger.acknowledged} operation(s) acknowledged, none expected")
        if cell.expect != Expect.NOT_APPLIED and ledger.failed:
            problems.append(f"{ledger.failed} operation(s) failed")
        if ledger.unexplained_users:
            problems.append(f"{ledger.unexplained_users} user(s) off by a fraction of a delta")
        if ledger.lost_updates:
            problems.append(f"{ledger.lost_updates} lost update(s)")
        if cell.expect != Expect.DUPLICATE and ledger.duplicates:
            problems.append(f"{ledger.duplicates} duplicate(s)")
        if cell.expect == Expect.DUPLICATE and not ledger.duplicates:
            problems.append(
                "negative control showed no duplicate: the harness did not provoke the anomaly"
            )
        if left.prepared_transactions:
            problems.append(f"{left.prepared_transactions} prepared transaction(s) left")
        if left.idle_in_transaction:
            problems.append(f"{left.idle_in_transaction} idle-in-transaction session(s) left")
        if left.invocations_not_completed:
            problems.append(f"{left.invocations_not_completed} invocation(s) not completed")


class _HarnessChaos:
    """Faults of the other parts at random moments, for the mixed storm."""

    def __init__(self, stack: ChaosStack, rnd: random.Random, every: float = 6.0) -> None:
        self.stack = stack
        self.random = rnd
        self.every = every
        self.injected: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-harness-faults", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        actions: dict[str, Callable[[], object]] = {
            "restate-restart": self.stack.restart_restate,
            "postgres-restart": self.stack.restart_postgres,
            "terminate-connections": self.stack.terminate_service_connections,
        }
        while not self._stop.wait(self.random.uniform(0.5, 1.5) * self.every):
            name = self.random.choice(sorted(actions))
            actions[name]()
            self.injected[name] = self.injected.get(name, 0) + 1


def _log_size(path: Any) -> int:
    try:
        return int(path.stat().st_size)
    except OSError:
        return 0


def _log_since(path: Any, offset: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []
