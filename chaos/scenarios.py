"""Running the cells of the chaos table (``chaos.cells``) on one chaos stack.

A cell is provoked, then the stack is *quiesced* (every paused process resumed and gone, no
session of the service busy: nothing the cell started can still write), then judged per
operation (``chaos.checker``; the rules in ``chaos.verdict``), with what the SQL trace says
each attempt did (``chaos.attempts``). Every earlier cell's ledger is read again after each
cell: a write that lands after a verdict is reported against the cell it belongs to, and fails
the cell that saw it.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import psycopg
from psycopg import sql

from chaos import attempts, endings
from chaos.cells import Cell, Expect, Fault
from chaos.checker import (
    baseline,
    check_ledger,
    check_leftovers,
    invocations_not_completed,
    late_writes,
)
from chaos.faults import FaultCounts
from chaos.handlers import BRIEF_DEPOSIT, IDEMPOTENCY_UPDATE, CreditHandler
from chaos.logs import log_since, log_size
from chaos.node_faults import NodeFaults
from chaos.points import (
    HOLD_MS,
    NONE_DECLARED,
    TWO_PC_AFTER_COMMIT,
    TWO_PC_BEFORE_COMMIT,
    TWO_PC_BEFORE_LEFTOVER_CHECK,
    points_of,
)
from chaos.service_pair import Zombie
from chaos.stack import CHAOS_IDLE_IN_TRANSACTION_MS, ChaosStack
from chaos.verdict import CellResult, Trial, judge
from chaos.workload import Operation, Outcome, Resolver, Running, User, create_users
from dbpatterns.exactly_once.gids import GID_PREFIX
from dbpatterns.examples import shapes
from dbpatterns.service import failpoints, janitor
from dbpatterns.stack import LabError, RestateCluster, wait_until

#: Operations per user in a storm: several on one key (contention), within the digits a user has.
STORM_OPS_PER_USER = 8


class ZombieCut(enum.StrEnum):
    """How Restate loses a paused process's attempt in a zombie cell."""

    #: Restate's side stays open and silent: Restate gives up by its own timeouts (inactivity +
    #: abort + its fixed drain, about 8 s with the harness's settings), then the harness resets
    #: that side so the retry reaches the standby. The faithful way, and the default.
    RESTATE_TIMEOUT = "restate-timeout"
    #: Restate's side is reset the moment the process pauses (a network partition): Restate
    #: retries within its backoff. Faster; the zombie sees the same thing either way.
    AT_ONCE = "at-once"


@dataclass
class _Judged:
    result: CellResult
    users: list[User]


# --- the runner ----------------------------------------------------------------------------------


class CellRunner(NodeFaults):
    """Runs cells one after another on one chaos stack."""

    def __init__(
        self,
        stack: ChaosStack,
        resolver: Resolver,
        *,
        seed: int | None = None,
        zombie_cut: ZombieCut = ZombieCut.RESTATE_TIMEOUT,
    ) -> None:
        self.stack = stack
        self.resolver = resolver
        self.random = random.Random(seed)
        self.zombie_cut = zombie_cut
        self.trace = attempts.Trace(stack.sql_trace_path)
        self.judged: list[_Judged] = []

    def run(self, cell: Cell) -> CellResult:
        stack = self.stack
        stack.failpoints.clear()
        stack.services.wait_ready()
        before = stack.faults.minus(FaultCounts())
        resumed_before = len(stack.services.resumed)
        trace_mark = self.trace.offset()
        earlier = baseline(stack.database_url, stack.admin)
        started = time.monotonic()
        trial = Trial(earlier)
        if earlier.prepared_xids or earlier.invocation_ids:
            trial.notes.append(
                f"left by earlier cells, not counted here: {len(earlier.prepared_xids)} prepared "
                f"transaction(s), {len(earlier.invocation_ids)} invocation(s) not completed "
                f"({earlier.scheduled} of them delayed calls, such as token expiries)"
            )
        users: list[User] = []
        missing = [p for p in self._points_needed(cell) if p not in failpoints.CATALOGUE]
        if missing:
            trial.problems.append(
                f"failpoint(s) {', '.join(missing)} not declared by the pattern code: "
                "this cell cannot be provoked"
            )
        else:
            try:
                users = self._provoke(cell, trial)
            finally:
                stack.failpoints.clear()
        try:
            stack.services.quiesce()
        except LabError as exc:
            trial.problems.append(str(exc))
        ledger = check_ledger(stack.database_url, users)
        leftovers = check_leftovers(stack.database_url, stack.admin, earlier=earlier)
        faults = stack.faults.minus(before)
        lines = self.trace.read(trace_mark)
        cell_invocations = {op.invocation_id for u in users for op in u.operations}
        grouped = attempts.attempts(lines)
        result = CellResult(
            cell,
            ledger,
            leftovers,
            faults,
            time.monotonic() - started,
            trial.problems,
            trial.notes,
            trial.counts,
            reached_db={
                i: n for i, n in attempts.reaching(grouped).items() if i in cell_invocations
            },
        )
        zombies = stack.services.resumed[resumed_before:]
        if cell.fault.is_zombie or zombies:
            result.zombie_sql = attempts.zombie_sql(
                lines, [(z.pid, z.resumed_at) for z in zombies if z.resumed_at is not None]
            )
            result.notes.append(f"zombie: {result.zombie_sql}")
        judge(result)
        self._reread_earlier_cells(result)
        self.judged.append(_Judged(result, users))
        return result

    def _reread_earlier_cells(self, current: CellResult) -> None:
        """Read every judged cell's users again: a count that moved is a late write."""
        for judged in self.judged:
            later = check_ledger(self.stack.database_url, judged.users)
            moved = [
                w
                for w in late_writes(judged.result.ledger, later)
                if w not in judged.result.late_writes
            ]
            if not moved:
                continue
            cell_id = judged.result.cell.id
            judged.result.late_writes += moved
            judged.result.problems += [f"late write after the verdict: {w}" for w in moved]
            current.problems.append(
                f"{len(moved)} late write(s) into the earlier cell {cell_id}: {moved[0]}"
            )

    @staticmethod
    def _points_needed(cell: Cell) -> list[str]:
        if cell.fault in (
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS,
            Fault.ZOMBIE_BETWEEN_PREPARE_AND_COMMIT,
        ):
            return [TWO_PC_BEFORE_LEFTOVER_CHECK, TWO_PC_BEFORE_COMMIT, TWO_PC_AFTER_COMMIT]
        if cell.point is not None:
            return [cell.point]
        # A storm needs every handler it drives to declare failpoints, or it proves nothing.
        return [f"{h.name}.{NONE_DECLARED}" for h in cell.handlers if not points_of(h)]

    def _provoke(self, cell: Cell, trial: Trial) -> list[User]:
        provoke: dict[Fault, Callable[[Cell, Trial], list[User]]] = {
            Fault.KILL: self._kill,
            Fault.ZOMBIE: self._zombie,
            Fault.ZOMBIE_AFTER_IDLE_TIMEOUT: self._zombie,
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: self._zombie,
            Fault.ZOMBIE_BETWEEN_PREPARE_AND_COMMIT: self._zombie_between_prepare_and_commit,
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: self._zombie_between_commit_attempts,
            Fault.OUTSIDE_WRITER: self._outside_writer,
            Fault.RESTATE_RESTART: self._held,
            Fault.POSTGRES_RESTART: self._held,
            Fault.TERMINATE_CONNECTIONS: self._held,
            Fault.INVOCATION_KILLED: self._invocation_killed,
            Fault.KILL_STORM: self._storm,
            Fault.MIXED_STORM: self._storm,
            Fault.LEADER_KILLED: self._node_fault,
            Fault.NODE_KILLED: self._node_fault,
            Fault.LEADER_PAUSED: self._node_fault,
            Fault.LEADER_ISOLATED: self._node_fault,
            Fault.CANCELLED: partial(endings.cancelled, self),
            Fault.CANCELLED_WHILE_FROZEN: partial(endings.ended_while_frozen, self),
            Fault.KILLED_WHILE_FROZEN: partial(endings.ended_while_frozen, self),
            Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE: partial(endings.ended_while_frozen, self),
        }
        if cell.load:
            return self._under_load(cell, trial)
        return provoke[cell.fault](cell, trial)

    def users_of(self, cell: Cell) -> list[User]:
        """One fresh user per operation, each with its one operation through the cell's handler."""
        users = create_users(self.stack.database_url, cell.operations, ledger=cell.handler.ledger)
        for user in users:
            user.operation(cell.handler)
        return users

    # --- kill ------------------------------------------------------------------------------------

    def _kill(self, cell: Cell, trial: Trial) -> list[User]:
        assert cell.point is not None
        users = self.users_of(cell)
        self.stack.failpoints.set({cell.point: "1*kill"})
        self.resolver.run_all(_ops(users))
        if self.stack.failpoints.remaining(cell.point) != 0:
            trial.problems.append(f"the failpoint {cell.point} was never reached")
        return users

    # --- zombie ----------------------------------------------------------------------------------

    def _zombie(self, cell: Cell, trial: Trial) -> list[User]:
        assert cell.point is not None
        stack = self.stack
        users = self.users_of(cell)
        earlier = self._invocations_not_completed()
        # A zombie racing the retry for a lock must be resumed before Postgres's idle timeout
        # ends its session, and the token-expiry control waits for the expiry: both need the
        # retry to start at once, not after Restate's own timeouts.
        at_once = (
            self.zombie_cut == ZombieCut.AT_ONCE
            or cell.cut_at_once
            or cell.races_a_lock
            or cell.fault == Fault.ZOMBIE_AFTER_TOKEN_EXPIRY
        )
        stack.services.reset_zombie_connections_at_once = at_once
        try:
            running, zombie = self.start_until_paused(users, {cell.point: "1*pause"}, trial)
        finally:
            stack.services.reset_zombie_connections_at_once = True
        if zombie is None:
            return users
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
            stack.services.reset_restate_side(zombie)
        if cell.races_a_lock:
            if wait_until(lambda: stack.services.sessions_waiting_for_a_lock() > 0, 10, 0.02):
                trial.counts["retry_waited_for_the_zombies_lock"] = 1
                trial.notes.append(
                    f"the retry waits for the zombie's lock {time.monotonic() - paused:.1f} s "
                    "after the pause: resuming the zombie now"
                )
            else:
                trial.problems.append("the retry never waited for the zombie's lock")
            stack.services.resume_zombie(zombie, linger=2.0)
            running.wait()
            return users
        # The retry runs in the standby. A zombie holding a lock the retry needs keeps it
        # waiting until Postgres ends the zombie's idle transaction; give it that long and more.
        running.wait(timeout=30)
        trial.notes.append(
            f"retry {'finished' if running.done() else 'still running'} "
            f"{time.monotonic() - paused:.1f} s after the pause "
            f"({zombie.connections_cut} connection(s) from Restate cut)"
        )
        if cell.fault == Fault.ZOMBIE_AFTER_IDLE_TIMEOUT:
            idle = CHAOS_IDLE_IN_TRANSACTION_MS / 1000 + 0.5
            time.sleep(max(0.0, paused + idle - time.monotonic()))
        if cell.fault == Fault.ZOMBIE_AFTER_TOKEN_EXPIRY:
            if not self._wait_tokens_expired(trial, cell.handler):
                trial.problems.append("the idempotency token did not expire")
            else:
                trial.notes.append("the retry's idempotency token had expired")
        self.resume_noting(zombie, trial)
        running.wait()
        return users

    def resume_noting(self, zombie: Zombie, trial: Trial, linger: float = 2.0) -> None:
        """Resume the zombie, let it linger, and note the last lines it logged meanwhile."""
        mark = log_size(zombie.slot.service.log_path)
        self.stack.services.resume_zombie(zombie, linger=linger)
        woke = [
            line
            for line in log_since(zombie.slot.service.log_path, mark)
            if not line.startswith("---")
        ]
        trial.notes.append("zombie log after resume: " + (" | ".join(woke[-3:]) or "(nothing)"))

    def start_until_paused(
        self, users: list[User], actions: dict[str, str], trial: Trial
    ) -> tuple[Running, Zombie | None]:
        """Switch ``actions`` on (one of them a ``1*pause``), send the users' operations, and
        wait for the process to pause; None (and a problem) if it never does."""
        stack = self.stack
        stack.failpoints.set(actions)
        running = self.resolver.start(_ops(users))
        try:
            return running, stack.services.wait_for_zombie(timeout=30)
        except TimeoutError:
            paused_at = [p for p, a in actions.items() if a.endswith("pause")]
            trial.problems.append(f"the failpoint {', '.join(paused_at)} never paused the service")
            running.wait()
            return running, None

    def _invocations_not_completed(self, target: str = "") -> set[str]:
        rows = invocations_not_completed(self.stack.admin)
        return {str(r["id"]) for r in rows if str(r["target"]).startswith(target)}

    def _wait_restate_gave_up(self, earlier: set[str], timeout: float) -> str | None:
        """Until Restate records the failure of an attempt of this cell's invocation (and
        schedules another): the failure's text."""
        seen: list[str] = []

        def gave_up() -> bool:
            rows = invocations_not_completed(self.stack.admin)
            seen[:] = [
                str(r["last_failure"])
                for r in rows
                if r["id"] not in earlier and r.get("last_failure") is not None
            ]
            return bool(seen)

        return seen[0][:200] if wait_until(gave_up, timeout, interval=0.2) else None

    def _tokens_of_this_cell(self, trial: Trial, handler: CreditHandler) -> set[str]:
        """The idempotency tokens ``handler`` inserted since the cell started."""
        table, _ = self._tokens(handler)
        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            rows = conn.execute(
                sql.SQL("SELECT id FROM {} WHERE created_at >= to_timestamp(%s)").format(
                    sql.Identifier(table)
                ),
                (trial.started - 1,),
            ).fetchall()
        return {str(token) for (token,) in rows}

    def _tokens(self, handler: CreditHandler) -> tuple[str, timedelta]:
        """The token table of an idempotent handler, and its TTL."""
        if handler == BRIEF_DEPOSIT:
            return shapes.TOKENS_TABLE, shapes.BRIEF_TTL
        return "user_idempotency", self.stack.token_ttl

    def _wait_tokens_expired(self, trial: Trial, handler: CreditHandler) -> bool:
        """Until the handler's tokens of this cell are gone: two TTLs after the call, and the
        expiry's own delay after that."""
        timeout = 2 * self._tokens(handler)[1].total_seconds() + 20
        return wait_until(
            lambda: not self._tokens_of_this_cell(trial, handler), timeout, interval=0.2
        )

    # --- the lost-update control ----------------------------------------------------------------

    def _outside_writer(self, cell: Cell, trial: Trial) -> list[User]:
        """The cell's first handler (a versioned update) is held after its journaled read while
        its second adds to the same row from outside the object: the held write then finds the
        version moved."""
        assert cell.point is not None
        stack = self.stack
        versioned, outsider = cell.handlers
        (user,) = create_users(stack.database_url, 1, ledger=versioned.ledger)
        held = user.operation(versioned)
        outside = user.operation(outsider)
        # Held less than the harness's inactivity timeout (2 s), so Restate does not give up on
        # the held attempt and run the write a second time.
        stack.failpoints.set({cell.point: f"1*sleep({HOLD_MS})"})
        running = self.resolver.start([held])
        if not wait_until(lambda: stack.failpoints.remaining(cell.point or "") == 0, 20, 0.02):
            trial.problems.append(f"{held.handler.name} never reached {cell.point}")
        self.resolver.run(outside)
        if running.done():
            trial.problems.append("the outside write landed after the held write: no window")
        else:
            trial.counts["outside_writes_inside_the_window"] = 1
            trial.notes.append(f"the outside write committed while {versioned.name} was held")
        running.wait()
        trial.notes.append(f"the held write's answer: {held.status} {held.answer[:160]}")
        if cell.expect == Expect.AS_ANSWERED and held.outcome != Outcome.FAILED:
            trial.problems.append(
                f"the versioned write answered {held.status}: it did not refuse the row another "
                "writer had moved"
            )
        return [user]

    # --- faults while operations are held ------------------------------------------------------

    def _hold(self, cell: Cell, trial: Trial, ms: int) -> tuple[list[User], Running, str]:
        """Send the cell's operations and hold each at the cell's point for ``ms``; return
        once all are held there (or say that they were not)."""
        point = cell.point
        assert point is not None
        stack = self.stack
        users = self.users_of(cell)
        stack.failpoints.set({point: f"{cell.operations}*sleep({ms})"})
        running = self.resolver.start(_ops(users))
        if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
            trial.problems.append(f"the operations did not all reach {point}")
        else:
            trial.notes.append(f"{cell.operations} operation(s) held at {point} when it struck")
        return users, running, point

    def _held(self, cell: Cell, trial: Trial) -> list[User]:
        stack = self.stack
        users, running, _ = self._hold(cell, trial, HOLD_MS)
        if cell.fault == Fault.RESTATE_RESTART:
            stack.injector.restart_restate()
        elif cell.fault == Fault.POSTGRES_RESTART:
            stack.injector.restart_postgres()
        else:
            terminated = stack.injector.terminate_service_connections()
            trial.counts["sessions_terminated"] = terminated
            if terminated == 0:
                trial.problems.append("no service session to terminate")
        running.wait()
        return users

    # --- an invocation killed through Restate ----------------------------------------------------

    def _invocation_killed(self, cell: Cell, trial: Trial) -> list[User]:
        """Hold the operation at ``cell.point``, kill its invocation (no handler code runs any
        more, not even a cleanup). ``twoPhaseCommit``: then sweep as ``./lab janitor --once
        --grace 0`` would. ``idempotency``: then show its token expires all the same."""
        point = cell.point
        assert point is not None
        stack = self.stack
        users = self.users_of(cell)
        target = f"{cell.handler.service}/{cell.handler.handler}"
        earlier = self._invocations_not_completed(target)
        stack.failpoints.set({point: f"1*sleep({HOLD_MS * 4})"})
        running = self.resolver.start(_ops(users))
        if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
            trial.problems.append(f"the operation did not reach {point}")
            running.wait()
            return users
        killed = sorted(self._invocations_not_completed(target) - earlier)
        children_before = self._scheduled_children(killed)
        log_marks = {slot.name: log_size(slot.service.log_path) for slot in stack.services.slots}
        for invocation in killed:
            stack.injector.kill_invocation(invocation)
        running.wait()
        trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in _ops(users)]
        if cell.handler in (IDEMPOTENCY_UPDATE, BRIEF_DEPOSIT):
            return users + self._expire_a_killed_token(cell.handler, trial, children_before, killed)
        prepared = check_leftovers(
            stack.database_url, stack.admin, settle=0, earlier=trial.earlier
        ).prepared
        listed = {i for i in killed if any(g.startswith(f"{GID_PREFIX}{i}:") for g in prepared)}
        verdicts = [
            v for v in janitor.sweep(stack.settings, grace=timedelta(0)) if v.invocation in killed
        ]
        trial.notes += [f"janitor: {v}" for v in verdicts]
        rolled_back = {v.invocation for v in verdicts if v.action == "rolled back"}
        # Each service process runs the janitor too (every DBPATTERNS_JANITOR_INTERVAL): when
        # its pass lands between the count above and this sweep, the sweep finds nothing to
        # do. Its log line naming the gid is the evidence that a janitor rolled it back.
        for slot in stack.services.slots:
            for line in log_since(slot.service.log_path, log_marks[slot.name]):
                for invocation in set(killed) - rolled_back:
                    if f"janitor: {GID_PREFIX}{invocation}:" in line and "-> rolled back" in line:
                        rolled_back.add(invocation)
                        trial.notes.append(f"rolled back by {slot.name}'s own janitor: {line}")
        # Prepared after the kill: listed by the harness, or (when a service's janitor came
        # first) named by the janitor that rolled it back.
        trial.counts["prepared_before_janitor"] = len(prepared) + len(rolled_back - listed)
        trial.counts["janitor_rolled_back"] = len(rolled_back)
        return users

    def _scheduled_children(self, parents: list[str]) -> int:
        rows = self.stack.admin.query(
            "SELECT id, invoked_by_id FROM sys_invocation WHERE status = 'scheduled'"
        )
        return sum(1 for r in rows if r.get("invoked_by_id") in parents)

    def _expire_a_killed_token(
        self, handler: CreditHandler, trial: Trial, children_before: int, killed: list[str]
    ) -> list[User]:
        """A kill through Restate kills the invocation's scheduled expiry with it (a delayed
        one-way call is a child of the invocation): count that, then show that the token goes
        all the same, with the expiry of the next call, which also deletes every expired token
        (a token expires two TTLs after its call started: the deadline, and as long again)."""
        stack = self.stack
        trial.counts["expiries_scheduled_before_the_kill"] = children_before
        trial.counts["expiries_killed_with_it"] = children_before - self._scheduled_children(killed)
        tokens = self._tokens_of_this_cell(trial, handler)
        trial.counts["tokens_of_killed_calls"] = len(tokens)
        (next_user,) = create_users(stack.database_url, 1, ledger=handler.ledger)
        self.resolver.run(next_user.operation(handler))
        waited = 2 * self._tokens(handler)[1].total_seconds() + 20

        def left() -> int:
            return len(tokens & self._tokens_of_this_cell(trial, handler))

        wait_until(lambda: left() == 0, waited, 0.2)
        trial.counts["tokens_left_after_the_next_expiry"] = left()
        if trial.counts["tokens_left_after_the_next_expiry"]:
            trial.problems.append(
                f"the killed call's token is still there {waited:g} s after the next call: leaked"
            )
        return [next_user]

    # --- zombies of twoPhaseCommit's prepare step in the middle of a healthy retry ------------

    def _zombie_between_prepare_and_commit(self, cell: Cell, trial: Trial) -> list[User]:
        """Attempt A freezes before its leftover check. Attempt B, in the standby, prepares,
        journals the PREPARE, and is held before its COMMIT PREPARED. A wakes: it finds B's
        prepared transaction and must leave it alone, so that B's commit succeeds."""
        stack = self.stack
        users = self.users_of(cell)
        actions = {TWO_PC_BEFORE_LEFTOVER_CHECK: "1*pause", TWO_PC_BEFORE_COMMIT: "1*sleep(4000)"}
        running, zombie = self.start_until_paused(users, actions, trial)
        if zombie is None:
            return users
        if wait_until(lambda: stack.failpoints.remaining(TWO_PC_BEFORE_COMMIT) == 0, 30, 0.02):
            trial.notes.append("B prepared and journaled it; B is held before COMMIT PREPARED")
        else:
            trial.problems.append("the retry never reached its COMMIT PREPARED")
        stack.services.resume_zombie(zombie, linger=1.0)
        running.wait()
        trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in _ops(users)]
        return users

    def _zombie_between_commit_attempts(self, cell: Cell, trial: Trial) -> list[User]:
        """Attempt A freezes before its leftover check. Attempt B, in the standby, prepares,
        commits, and dies before Restate records the commit. While attempt C is held before its
        COMMIT PREPARED, A wakes: it finds nothing under the gid (B committed), adds the credits
        again and prepares that under the same gid. Then C runs COMMIT PREPARED gid: whatever
        it commits must not be A's transaction."""
        stack = self.stack
        users = self.users_of(cell)
        killed_before = stack.faults.service_killed
        actions = {
            TWO_PC_BEFORE_LEFTOVER_CHECK: "1*pause",
            TWO_PC_BEFORE_COMMIT: f"2*sleep({HOLD_MS * 2})",
            TWO_PC_AFTER_COMMIT: "1*kill",
        }
        running, zombie = self.start_until_paused(users, actions, trial)
        if zombie is None:
            return users
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
        stack.services.resume_zombie(zombie, linger=HOLD_MS * 2 / 1000)
        running.wait()
        trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in _ops(users)]
        return users

    # --- storms ----------------------------------------------------------------------------------

    def _storm(self, cell: Cell, trial: Trial) -> list[User]:
        """``cell.operations`` operations, spread over the handlers, several per user (at most
        ``STORM_OPS_PER_USER``), sent in random order so a user's operations overlap."""
        stack = self.stack
        rnd = self.random
        users: list[User] = []
        ops: list[Operation] = []
        for index, handler in enumerate(cell.handlers):
            count = cell.operations // len(cell.handlers) + (
                1 if index < cell.operations % len(cell.handlers) else 0
            )
            mine = create_users(
                stack.database_url,
                math.ceil(count / STORM_OPS_PER_USER),
                ledger=handler.ledger,
            )
            ops += [mine[i % len(mine)].operation(handler) for i in range(count)]
            users += mine
        rnd.shuffle(ops)
        points = [p for h in cell.handlers for p in points_of(h)]
        kill_percent = 2.0
        actions = {p: f"{kill_percent:g}%kill" for p in points}
        mixed = cell.fault == Fault.MIXED_STORM
        if mixed:
            for p in rnd.sample(points, k=max(1, len(points) // 3)):
                actions[p] = "1%pause"
            stack.services.auto_resume_after = 4.0
        stack.failpoints.set(actions)
        chaos = _HarnessChaos(stack, rnd) if mixed else None
        try:
            if chaos is not None:
                chaos.start()
            self.resolver.run_all(ops)
        finally:
            if chaos is not None:
                chaos.stop()
                trial.notes.append(f"harness faults: {chaos.injected}")
            stack.failpoints.clear()
            if mixed:
                stack.services.auto_resume_after = None  # quiesce() wakes any zombie left
        trial.notes.append(
            f"{len(users)} users, {len(ops)} ops (up to {STORM_OPS_PER_USER} per user), "
            f"failpoints: {len(points)} at {kill_percent:g}% kill"
        )
        return users


def _ops(users: list[User]) -> list[Operation]:
    return [op for user in users for op in user.operations]


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
            "postgres-restart": self.stack.injector.restart_postgres,
            "terminate-connections": self.stack.injector.terminate_service_connections,
        }
        if isinstance(self.stack.restate, RestateCluster):
            actions |= {
                "node-killed": self._kill_a_node,
                "node-paused": self._pause_a_node,
                "node-cut-off": self._cut_a_node_off,
            }
        else:
            actions["restate-restart"] = self.stack.injector.restart_restate
        while not self._stop.wait(self.random.uniform(0.5, 1.5) * self.every):
            name = self.random.choice(sorted(actions))
            actions[name]()
            self.injected[name] = self.injected.get(name, 0) + 1

    def _kill_a_node(self) -> None:
        """One node of the cluster dies and is started again a moment later (one at a time:
        two down would stop the cluster)."""
        name = self.random.choice([n.name for n in self.stack.cluster.nodes])
        self.stack.injector.kill_node(name)
        time.sleep(self.random.uniform(1.0, 4.0))
        self.stack.injector.restart_node(name)

    def _pause_a_node(self) -> None:
        name = self.random.choice([n.name for n in self.stack.cluster.nodes])
        self.stack.injector.pause_node(name)
        time.sleep(self.random.uniform(2.0, 8.0))
        self.stack.injector.resume_node(name)

    def _cut_a_node_off(self) -> None:
        """A network partition of one node, from a few seconds (healed before the others
        notice) to longer than a failover takes (measured: 11-34 s)."""
        name = self.random.choice([n.name for n in self.stack.cluster.nodes])
        self.stack.injector.isolate_node(name)
        time.sleep(self.random.uniform(3.0, 40.0))
        self.stack.injector.heal_node(name)
