"""Cells of a three-node Restate cluster: one node fails with calls in flight.

Two shapes. *Held*: the cell's few calls are held before their commit (``sleep`` at the hold
point) when the node that leads their partition (or one at random) is killed, paused or cut off
from its peers; what is measured is the stall of those calls, and what must hold is exactly once
for each. *Under load*: calls arrive at a steady pace, as users send them, before, during and
after the fault; what is measured is how far the completions per second fall and how long
until they are back (``recovery_ms``), and again every call must be applied exactly once.

The partition comes from the harness's loopback network (``chaos.network``): the node keeps
running, cut off from the other nodes and from the service, and its own attempts go on in the
service and reach the database while the others elect new leaders. That is the cluster-level
zombie these cells catch.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from chaos import attempts
from chaos.cells import Cell, Fault
from chaos.cluster_cells import LOAD_AFTER_S, LOAD_BEFORE_S, LOAD_RATE
from chaos.stack import ChaosStack
from chaos.verdict import Trial
from chaos.workload import Operation, Resolver, Running, User, create_users
from dbpatterns.exactly_once.calls import INVOCATION_ID
from dbpatterns.measure.stats import percentile
from dbpatterns.stack import wait_until
from dbpatterns.stack.client import Admin
from dbpatterns.stack.partitions import Partition
from dbpatterns.testing.verdict import Outcome

log = logging.getLogger("chaos")

#: How long the operations of a node-fault cell are held before their commit, and how long a
#: paused node stays paused: long enough for its peers to notice and move its partitions.
NODE_FAULT_HOLD_MS = 4000
#: A partition cell holds its calls for less: the cut-off leader's attempts must commit while
#: it is cut off (about 0.6 s after the hold starts), and before Postgres ends a session idle
#: in its transaction (``CHAOS_IDLE_IN_TRANSACTION_MS``, 3 s), which would refuse the commit.
PARTITION_HOLD_MS = 2000
NODE_PAUSE_S = 10.0
#: A node cut off from its peers: how long the others may take to elect new leaders for its
#: partitions (measured: 11-34 s with Restate's default failure detection), and how long the
#: calls then get to finish before the partition heals (a call that entered through the cut-off
#: node's ingress waits out the workload's 20 s request timeout, then asks another node).
PARTITION_FAILOVER_TIMEOUT_S = 90.0
PARTITION_CALLS_TIMEOUT_S = 30.0

#: Recovered: from this second on, every second completes at least this share of the calls
#: per second completed before the fault.
RECOVERED_SHARE = 0.75


@dataclass
class Cut:
    """A node cut off by a partition: its peers on the other side, the partitions it led,
    when the cut struck and the last moment the others still saw it as their leader."""

    victim: str
    others: list[str]
    led: list[Partition]
    struck: float  # wall clock
    still_led_at: float  # wall clock; moves on while the others still see it leading


class NodeFaults:
    """The node-fault cells of a runner: held calls, or a steady load, across a node's failure.

    Given what they need: the stack (a cluster), the resolver that sends the calls, the SQL
    trace, the runner's random, and ``hold``, which sends a cell's operations and holds each at
    the cell's point (``Provoker.hold``)."""

    def __init__(
        self,
        stack: ChaosStack,
        resolver: Resolver,
        trace: attempts.Trace,
        rnd: random.Random,
        hold: Callable[[Cell, Trial, int], tuple[list[User], Running, str]],
    ) -> None:
        self.stack = stack
        self.resolver = resolver
        self.trace = trace
        self.random = rnd
        self._hold = hold

    def _strike(self, cell: Cell, victim: str, running: Running, trial: Trial) -> float:
        """Fail ``victim`` as ``cell`` says; return when (wall clock) it struck. A paused node
        is resumed and a cut-off one healed before this returns; a killed one stays dead."""
        stack = self.stack
        trace_mark = self.trace.offset()
        struck = time.time()
        if cell.fault == Fault.LEADER_PAUSED:
            stack.injector.pause_node(victim)
            time.sleep(NODE_PAUSE_S)
            stack.injector.resume_node(victim)
        elif cell.fault == Fault.LEADER_ISOLATED:
            cut = self._partition(victim, trial, struck)
            if not cell.load:
                self._calls_during_partition(running, trial)
                self._prove_cut_off_leader_acted(cut, running, trial, trace_mark)
            stack.injector.heal_node(victim)
        else:
            stack.injector.kill_node(victim)
        return struck

    def _made_whole(self, cell: Cell, victim: str, trial: Trial) -> None:
        """Start a killed node again; every node must be ready and the leaders settled."""
        stack = self.stack
        if cell.fault in (Fault.LEADER_KILLED, Fault.NODE_KILLED):
            stack.injector.restart_node(victim)
        if not stack.cluster.settled():
            trial.problems.append("the cluster did not settle (ready, leaders unmoved) again")
        trial.counts["nodes_ready_at_the_end"] = sum(n.answers() for n in stack.cluster.nodes)

    def held_calls(self, cell: Cell, trial: Trial) -> list[User]:
        """The cell's operations, sent through every node's ingress, are held before their
        commit (``sleep`` at the hold point); one node is killed or paused (the leader of a
        held call's partition, or one at random); then the cluster is made whole again (the
        killed node started again, the paused one resumed) and every node must be ready.

        Measured: each held operation's latency (sent to definite answer, the hold included)
        as ``stall_*_ms``, and ``first_answer_after_fault_ms``, how long after the fault the
        first operation got its answer."""
        hold = PARTITION_HOLD_MS if cell.fault == Fault.LEADER_ISOLATED else NODE_FAULT_HOLD_MS
        users, running, point = self._hold(cell, trial, hold)
        victim = self._victim(cell, trial)
        struck = self._strike(cell, victim, running, trial)
        ops = running.wait()
        self._made_whole(cell, victim, trial)
        latencies = sorted(op.latency for op in ops if op.latency is not None)
        if latencies:
            trial.counts["stall_p50_ms"] = round(1000 * percentile(latencies, 50))
            trial.counts["stall_p99_ms"] = round(1000 * percentile(latencies, 99))
            trial.counts["stall_max_ms"] = round(1000 * latencies[-1])
        answered = sorted(op.resolved_at - struck for op in ops if op.resolved_at is not None)
        after = [t for t in answered if t >= 0]
        trial.counts["answered_before_the_fault"] = len(answered) - len(after)
        if len(after) < len(answered):
            trial.problems.append(
                f"{len(answered) - len(after)} call(s) answered before the fault: not in flight "
                "when it struck (an attempt restarted before it, by a leader moving back?)"
            )
        if after:
            trial.counts["first_answer_after_fault_ms"] = round(1000 * after[0])
        trial.notes.append(
            "answers at (s after the fault): " + ", ".join(f"{t:+.2f}" for t in answered)
        )
        trial.counts["requests_per_operation_max"] = max(op.requests for op in ops)
        trial.notes.append(
            f"{cell.fault} {victim} at {struck - trial.started:.1f} s; ops held "
            f"{hold} ms at {point}; answers via "
            + ", ".join(sorted({url.rsplit(":", 1)[-1] for op in ops for url in op.via}))
        )
        return users

    def _partition(self, victim: str, trial: Trial, struck: float) -> Cut:
        """Cut ``victim`` off from its peers and the service; return once the others lead
        every partition it led (``failover_ms``), with what the cut-off leader led and the
        last moment the others still saw it as their leader: until then, no other node can
        have started an attempt of a call on its partitions."""
        stack = self.stack
        led = [p for p in stack.cluster.partitions() or [] if p.leader == victim]
        others = [n.name for n in stack.cluster.nodes if n.name != victim]
        cut = Cut(victim, others, led, struck, still_led_at=struck)
        held = stack.injector.isolate_node(victim)
        trial.notes.append(f"{victim} cut off; {held} of its connections went silent")

        def moved() -> bool:
            now = time.time()
            leaders = stack.cluster.leaders(seen_from=cut.others)
            if leaders is None or any(leaders.get(p.id) in (None, victim) for p in led):
                cut.still_led_at = now
                return False
            return True

        if wait_until(moved, PARTITION_FAILOVER_TIMEOUT_S, interval=0.5):
            trial.counts["failover_ms"] = round(1000 * (time.time() - struck))
        else:
            trial.problems.append(
                f"the other nodes did not take over {victim}'s partitions within "
                f"{PARTITION_FAILOVER_TIMEOUT_S:.0f} s"
            )
        return cut

    def _calls_during_partition(self, running: Running, trial: Trial) -> None:
        """Give the held calls time to be answered by the new leaders before the heal."""
        running.wait(timeout=PARTITION_CALLS_TIMEOUT_S)
        trial.counts["answered_during_the_partition"] = sum(
            op.resolved_at is not None for op in running.ops
        )

    def _prove_cut_off_leader_acted(
        self, cut: Cut, running: Running, trial: Trial, trace_mark: int
    ) -> None:
        """Statements of the calls on the cut-off leader's partitions that reached the database
        after the cut, while the others still saw it as their leader: its own attempts, the
        zombie the cell is about."""
        cut_off = set()
        for op in running.ops:
            key = self._partition_key(op.invocation_id, cut.others) if op.invocation_id else None
            if key is not None and any(p.holds(key) for p in cut.led):
                cut_off.add(op.invocation_id)
        trial.counts["calls_on_the_cut_off_leader"] = len(cut_off)
        window = [
            line
            for line in self.trace.read(trace_mark)
            if line["invocation"] in cut_off and cut.struck <= line["t"] <= cut.still_led_at
        ]
        during = [line for line in window if attempts.reached_database(line)]
        trial.counts["statements_of_the_cut_off_leader"] = len(during)
        trial.counts["statements_of_the_cut_off_leader_refused"] = len(window) - len(during)
        if not during:
            trial.problems.append(
                f"no attempt started by the cut-off leader {cut.victim} reached the database "
                "during the partition: the cell proves nothing"
            )

    # --- under load ------------------------------------------------------------------------------

    def under_load(self, cell: Cell, trial: Trial) -> list[User]:
        """Calls at ``LOAD_RATE`` per second through every node's ingress; after
        ``LOAD_BEFORE_S``, the node leading the most partitions (or one at random) fails; the
        calls go on for ``LOAD_AFTER_S``. Measured: completions per second before the fault,
        the lowest second after it, and ``recovery_ms``, from the fault to the second from
        which every second completes at least ``RECOVERED_SHARE`` of the rate before."""
        count = round(LOAD_RATE * (LOAD_BEFORE_S + LOAD_AFTER_S))
        users = create_users(self.stack.database_url, count, ledger=cell.handler.ledger)
        ops = [user.operation(cell.handler) for user in users]
        running = self.resolver.start(ops, rate=LOAD_RATE)
        time.sleep(LOAD_BEFORE_S)
        victim = self._busiest(cell, trial)
        struck = self._strike(cell, victim, running, trial)
        running.wait()
        self._made_whole(cell, victim, trial)
        recovery(ops, struck, trial)
        trial.notes.append(
            f"{cell.fault} {victim} at {struck - trial.started:.1f} s under {LOAD_RATE:.0f} "
            f"calls/s; {len(ops)} calls"
        )
        return users

    def _busiest(self, cell: Cell, trial: Trial) -> str:
        """The node leading the most partitions (for a random kill, any node)."""
        names = [node.name for node in self.stack.cluster.nodes]
        if cell.fault == Fault.NODE_KILLED:
            return self.random.choice(names)
        leaders = list((self.stack.cluster.leaders() or {}).values())
        led = {name: leaders.count(name) for name in names}
        victim = max(names, key=lambda name: led[name])
        trial.notes.append(f"{victim} leads {led[victim]} of {len(leaders)} partitions")
        return victim

    def _victim(self, cell: Cell, trial: Trial) -> str:
        """The node to fail: the leader of a held call's partition (asked of Restate), or one
        at random."""
        names = [node.name for node in self.stack.cluster.nodes]
        if cell.fault == Fault.NODE_KILLED:
            return self.random.choice(names)
        held = self._a_running_invocation(cell.handler.service)
        leader = self._leader_of(held) if held else None
        if leader is None:
            trial.problems.append("no leader found for a held call: a random node instead")
            return self.random.choice(names)
        trial.notes.append(f"{leader} leads the partition of {held}")
        return leader

    def _leader_of(self, invocation_id: str) -> str | None:
        """The node leading the partition of ``invocation_id`` (asked through a node that
        answers), or None."""
        key = self._partition_key(invocation_id)
        return None if key is None else self.stack.cluster.leader_of(key)

    def _partition_key(
        self, invocation_id: str, seen_from: Sequence[str] | None = None
    ) -> int | None:
        """The partition key of ``invocation_id`` (which partition holds it), asked of the
        nodes ``seen_from`` (by default any) until one answers; None if none knows it."""
        if not INVOCATION_ID.fullmatch(invocation_id):  # Restate's SQL takes no parameters
            raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
        for node in self.stack.cluster.nodes:
            if (seen_from is not None and node.name not in seen_from) or not node.answers():
                continue
            admin = Admin(node.address.admin_url, timeout=10)
            try:
                rows = admin.query(
                    "SELECT partition_key FROM sys_invocation_status "  # noqa: S608
                    f"WHERE id = '{invocation_id}'"
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "%s could not tell the partition of %s: %s", node.name, invocation_id, exc
                )
                continue
            finally:
                admin.close()
            if rows:
                return int(rows[0]["partition_key"])
        return None

    def _a_running_invocation(self, service: str) -> str | None:
        if not re.fullmatch(r"[A-Za-z]+", service):  # Restate's SQL takes no parameters
            raise ValueError(f"not a service name: {service!r}")
        rows = self.stack.admin.query(
            "SELECT id FROM sys_invocation "  # noqa: S608
            f"WHERE target_service_name = '{service}' AND status = 'running' LIMIT 1"
        )
        return str(rows[0]["id"]) if rows else None


def recovery(ops: list[Operation], struck: float, trial: Trial) -> None:
    """Completions per second around the fault at ``struck`` (wall clock), into
    ``trial.counts``: the rate before (its first second left out: the load was starting),
    the lowest second after, and ``recovery_ms`` (0: the rate never fell below the share)."""
    done = [
        op.resolved_at - struck
        for op in ops
        if op.resolved_at is not None and op.outcome == Outcome.ACKNOWLEDGED
    ]
    before = [t for t in done if -LOAD_BEFORE_S + 1 <= t < 0]
    rate = len(before) / (LOAD_BEFORE_S - 1)
    seconds = int(LOAD_AFTER_S) - 1  # the last second only drains what is left
    per_second = [sum(1 for t in done if k <= t < k + 1) for k in range(seconds)]
    low = [k for k, n in enumerate(per_second) if n < RECOVERED_SHARE * rate]
    trial.counts["completed_per_s_before"] = round(rate)
    trial.counts["completed_per_s_lowest_after"] = min(per_second, default=0)
    trial.counts["recovery_ms"] = 1000 * (low[-1] + 1) if low else 0
    if low and low[-1] == seconds - 1:
        trial.problems.append(f"the completions per second had not recovered {seconds} s after")
    trial.notes.append("completions per second after the fault: " + " ".join(map(str, per_second)))
