"""Running the cells of the chaos table (``chaos.cells``) on one chaos stack.

A cell is provoked, then the stack is *quiesced* (every paused process resumed and gone, no
session of the service busy: nothing the cell started can still write), then judged per
operation (``chaos.checker``; the rules in ``chaos.verdict``), with what the SQL trace says
each attempt did (``chaos.attempts``). Every earlier cell's ledger is read again after each
cell: a write that lands after a verdict is reported against the cell it belongs to, and fails
the cell that saw it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from chaos import attempts, endings, failpoint_faults, held, storms
from chaos.cells import Cell, Fault
from chaos.checker import baseline, check_ledger, check_leftovers, late_writes
from chaos.faults import FaultCounts
from chaos.node_faults import NodeFaults
from chaos.points import (
    NONE_DECLARED,
    TWO_PC_AFTER_COMMIT,
    TWO_PC_BEFORE_COMMIT,
    TWO_PC_BEFORE_LEFTOVER_CHECK,
    points_of,
)
from chaos.provoke import Provoker, ZombieCut
from chaos.stack import ChaosStack
from chaos.verdict import CellResult, Trial, judge
from chaos.workload import Resolver, User
from dbpatterns.service import failpoints
from dbpatterns.stack import LabError


@dataclass
class _Judged:
    result: CellResult
    users: list[User]


class CellRunner:
    """Runs cells one after another on one chaos stack.

    Composed of what provokes the cells: a ``Provoker`` (the stack, the resolver, the random,
    and the steps the families of provocations share) and the node-fault cells, given the
    provoker's ``hold``."""

    def __init__(
        self,
        stack: ChaosStack,
        resolver: Resolver,
        *,
        seed: int | None = None,
        zombie_cut: ZombieCut = ZombieCut.RESTATE_TIMEOUT,
    ) -> None:
        self.stack = stack
        self.trace = attempts.Trace(stack.sql_trace_path)
        rnd = random.Random(seed)
        self.provoker = Provoker(stack, resolver, rnd, zombie_cut)
        self.node_faults = NodeFaults(stack, resolver, self.trace, rnd, self.provoker.hold)
        self.judged: list[_Judged] = []

    @property
    def zombie_cut(self) -> ZombieCut:
        """How zombie cells cut Restate off from the paused process (``ZombieCut``)."""
        return self.provoker.zombie_cut

    @zombie_cut.setter
    def zombie_cut(self, cut: ZombieCut) -> None:
        self.provoker.zombie_cut = cut

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
        p = self.provoker
        provoke: dict[Fault, Callable[[Cell, Trial], list[User]]] = {
            Fault.KILL: partial(failpoint_faults.kill, p),
            Fault.ZOMBIE: partial(failpoint_faults.zombie_at_point, p),
            Fault.ZOMBIE_AFTER_IDLE_TIMEOUT: partial(failpoint_faults.zombie_at_point, p),
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: partial(failpoint_faults.zombie_at_point, p),
            Fault.ZOMBIE_BETWEEN_PREPARE_AND_COMMIT: partial(
                failpoint_faults.zombie_between_prepare_and_commit, p
            ),
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: partial(
                failpoint_faults.zombie_between_commit_attempts, p
            ),
            Fault.OUTSIDE_WRITER: partial(held.outside_writer, p),
            Fault.RESTATE_RESTART: partial(held.held, p),
            Fault.POSTGRES_RESTART: partial(held.held, p),
            Fault.TERMINATE_CONNECTIONS: partial(held.held, p),
            Fault.INVOCATION_KILLED: partial(held.invocation_killed, p),
            Fault.KILL_STORM: partial(storms.storm, p),
            Fault.MIXED_STORM: partial(storms.storm, p),
            Fault.LEADER_KILLED: self.node_faults.held_calls,
            Fault.NODE_KILLED: self.node_faults.held_calls,
            Fault.LEADER_PAUSED: self.node_faults.held_calls,
            Fault.LEADER_ISOLATED: self.node_faults.held_calls,
            Fault.CANCELLED: partial(endings.cancelled, p),
            Fault.CANCELLED_WHILE_FROZEN: partial(endings.ended_while_frozen, p),
            Fault.KILLED_WHILE_FROZEN: partial(endings.ended_while_frozen, p),
            Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE: partial(endings.ended_while_frozen, p),
        }
        if cell.load:
            return self.node_faults.under_load(cell, trial)
        return provoke[cell.fault](cell, trial)
