"""What every provocation of a cell works with: the chaos stack, the resolver that sends the
cell's operations, a seeded random, and the steps several families of provocations share.

Each family lives in a module of its own, as functions of a ``Provoker``, a cell and its
``Trial`` that return the cell's users: ``chaos.failpoint_faults`` (a kill or a pause at a
failpoint), ``chaos.held`` (faults that strike while operations are held at one),
``chaos.storms``, ``chaos.endings`` (the end of an invocation while its step is in flight) and
``chaos.node_faults`` (a node of a cluster failing). ``chaos.runner`` picks one per cell.
"""

from __future__ import annotations

import enum
import random

from chaos import checker
from chaos.cells import Cell
from chaos.logs import log_since, log_size
from chaos.service_pair import Zombie
from chaos.stack import ChaosStack
from chaos.verdict import Trial
from chaos.workload import Operation, Resolver, Running, User, create_users
from dbpatterns.stack import wait_until


class ZombieCut(enum.StrEnum):
    """How Restate loses a paused process's attempt in a zombie cell."""

    #: Restate's side stays open and silent: Restate gives up by its own timeouts (inactivity +
    #: abort + its fixed drain, about 8 s with the harness's settings), then the harness resets
    #: that side so the retry reaches the standby. The faithful way, and the default.
    RESTATE_TIMEOUT = "restate-timeout"
    #: Restate's side is reset the moment the process pauses (a network partition): Restate
    #: retries within its backoff. Faster; the zombie sees the same thing either way.
    AT_ONCE = "at-once"


class Provoker:
    """The stack, the resolver and the random of a runner, and the steps its provocations share."""

    def __init__(
        self,
        stack: ChaosStack,
        resolver: Resolver,
        rnd: random.Random,
        zombie_cut: ZombieCut = ZombieCut.RESTATE_TIMEOUT,
    ) -> None:
        self.stack = stack
        self.resolver = resolver
        self.random = rnd
        self.zombie_cut = zombie_cut

    def users_of(self, cell: Cell) -> list[User]:
        """One fresh user per operation, each with its one operation through the cell's handler."""
        users = create_users(self.stack.database_url, cell.operations, ledger=cell.handler.ledger)
        for user in users:
            user.operation(cell.handler)
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
        self,
        users: list[User],
        actions: dict[str, str],
        trial: Trial,
        *,
        cut_at_once: bool = True,
    ) -> tuple[Running, Zombie | None]:
        """Switch ``actions`` on (one of them a ``1*pause``), send the users' operations, and
        wait for the process to pause; None (and a problem) if it never does. ``cut_at_once``:
        Restate's side of the paused process's connections is reset the moment it pauses;
        otherwise it stays open and silent until ``services.reset_restate_side``."""
        stack = self.stack
        stack.services.reset_zombie_connections_at_once = cut_at_once
        try:
            stack.failpoints.set(actions)
            running = self.resolver.start(ops_of(users))
            try:
                return running, stack.services.wait_for_zombie(timeout=30)
            except TimeoutError:
                paused_at = [p for p, a in actions.items() if a.endswith("pause")]
                trial.problems.append(
                    f"the failpoint {', '.join(paused_at)} never paused the service"
                )
                running.wait()
                return running, None
        finally:
            stack.services.reset_zombie_connections_at_once = True

    def invocations_not_completed(self, target: str = "") -> set[str]:
        rows = checker.invocations_not_completed(self.stack.admin)
        return {str(r["id"]) for r in rows if str(r["target"]).startswith(target)}

    def hold(self, cell: Cell, trial: Trial, ms: int) -> tuple[list[User], Running, str]:
        """Send the cell's operations and hold each at the cell's point for ``ms``; return
        once all are held there (or say that they were not)."""
        point = cell.point
        assert point is not None
        stack = self.stack
        users = self.users_of(cell)
        stack.failpoints.set({point: f"{cell.operations}*sleep({ms})"})
        running = self.resolver.start(ops_of(users))
        if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
            trial.problems.append(f"the operations did not all reach {point}")
        else:
            trial.notes.append(f"{cell.operations} operation(s) held at {point} when it struck")
        return users, running, point


def ops_of(users: list[User]) -> list[Operation]:
    return [op for user in users for op in user.operations]
