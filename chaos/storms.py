"""Storms: many operations, several per user, under faults at random.

* ``kill-storm``: every failpoint of the cell's handlers kills the process at random (a few
  percent of the hits);
* ``mixed-storm`` (soak): the same with pauses at a third of the points (resumed 4 s later), and
  faults of the other parts at random moments (``_HarnessChaos``): restate-server or, in a
  cluster, a node killed, paused or cut off; Postgres restarted; the service's sessions cut.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

from chaos.cells import Cell, Fault
from chaos.points import points_of
from chaos.provoke import Provoker
from chaos.stack import ChaosStack
from chaos.verdict import Trial
from chaos.workload import Operation, User, create_users
from dbpatterns.stack import RestateCluster

#: Operations per user in a storm: several on one key (contention), within the digits a user has.
STORM_OPS_PER_USER = 8


def storm(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """``cell.operations`` operations, spread over the handlers, several per user (at most
    ``STORM_OPS_PER_USER``), sent in random order so a user's operations overlap."""
    stack = provoker.stack
    rnd = provoker.random
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
        provoker.resolver.run_all(ops)
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
