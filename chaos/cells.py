"""The chaos table: (handler, failpoint, fault) -> the outcome the pattern promises, and why.

A cell provokes its fault at a named failpoint (or, for faults of restate-server and Postgres,
while operations are held at one), resolves every operation, and then measures each operation
on its own: applied 0, 1, 2, ... times (``chaos.checker``). Its *expectation* says what the
pattern promises:

* ``exactly once``: every operation acknowledged and applied once, nothing left behind;
* ``duplicate`` / ``lost update`` (negative controls): the anomaly the pattern's docstring admits
  MUST show, or the harness failed to provoke the fault it claims to test: such a cell that
  shows none fails;
* ``not applied``: the call fails and nothing of it stays;
* ``applied, call killed``: the transaction committed before the invocation was killed, so its
  credits stay (once) while the caller hears of the kill.

Kill and zombie cells are generated from the failpoint catalogue (``failpoints.CATALOGUE``), so
a failpoint added to a handler gets its cells without touching the table. This module holds
what a cell is; the builders of each family of cells are ``chaos.lab_cells`` (the lab's credit
handlers, the invoices example, the storms), ``chaos.surface`` (the shapes example) and
``chaos.cluster_cells`` (a node of a cluster failing); ``chaos.table`` puts the quick profile
together.

Faults:

* ``kill``: the failpoint SIGKILLs the service process once; the retry runs in the standby.
* ``zombie``: the failpoint SIGSTOPs the process once; Restate is cut off from it and retries
  the invocation in the standby; the paused process is resumed when that retry has finished,
  or, where the zombie holds a transaction open, as soon as the retry waits for the zombie's
  lock: two attempts of one invocation race in the database. The cell passes only if the
  zombie's attempt reached the database after it resumed (``chaos.attempts``). A zombie at a
  point after which its attempt runs no SQL has nothing to race with: that point has its kill
  cell only.
* ``zombie-after-idle-timeout``: a zombie holding a transaction open is resumed only after
  Postgres's idle-in-transaction timeout ended its session: its next statement must fail, and
  it is that timeout, not the pattern, that keeps the retry and the zombie apart.
* ``zombie-after-token-expiry``: the zombie resumes after the retry's idempotency token expired.
* ``zombie-between-prepare-and-commit`` / ``zombie-between-commit-attempts``: the two ways a
  zombie of ``twoPhaseCommit``'s prepare step can wake in the middle of a healthy retry.
* ``outside-writer``: another handler writes the same user between ``updateConditional``'s read
  and its write (the lost update ``keyed.py`` admits).
* ``restate-restart`` / ``postgres-restart`` / ``terminate-connections``: operations are held at
  a failpoint (``sleep``) while restate-server is SIGKILLed and started again, Postgres is shut
  down immediately and started again, or the service's sessions are terminated.
* ``invocation-killed``: the invocation is killed through Restate's admin API while held (then
  one more call, for ``idempotency``, whose expiry must sweep the killed call's token).
* ``kill-storm``: many operations on the exactly-once handlers, several per user, while every
  failpoint of those handlers kills the process at random (a few percent of the hits).
* ``mixed-storm`` (soak): the same with every kind of fault, at random.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from chaos.faults import FaultCounts
from chaos.handlers import CreditHandler
from chaos.points import OPEN_TRANSACTION, lab_point


class Fault(enum.StrEnum):
    KILL = "kill"
    ZOMBIE = "zombie"
    ZOMBIE_AFTER_IDLE_TIMEOUT = "zombie-after-idle-timeout"
    ZOMBIE_AFTER_TOKEN_EXPIRY = "zombie-after-token-expiry"
    ZOMBIE_BETWEEN_PREPARE_AND_COMMIT = "zombie-between-prepare-and-commit"
    ZOMBIE_BETWEEN_COMMIT_ATTEMPTS = "zombie-between-commit-attempts"
    OUTSIDE_WRITER = "outside-writer"
    RESTATE_RESTART = "restate-restart"
    POSTGRES_RESTART = "postgres-restart"
    TERMINATE_CONNECTIONS = "terminate-connections"
    INVOCATION_KILLED = "invocation-killed"
    KILL_STORM = "kill-storm"
    MIXED_STORM = "mixed-storm"
    # A cluster of restate-server nodes (``./lab chaos --profile cluster``):
    LEADER_KILLED = "leader-killed"  # the node leading the partition of the calls in flight
    NODE_KILLED = "node-killed"  # a node picked at random
    LEADER_PAUSED = "leader-paused"  # SIGSTOP, then SIGCONT: a cluster-level zombie
    LEADER_ISOLATED = "leader-isolated"  # cut off from its peers and the service, then healed
    # The end of an invocation through the admin API, while its step is in flight:
    CANCELLED = "invocation-cancelled"  # the attempt is held (sleep), alive
    CANCELLED_WHILE_FROZEN = "cancelled-while-frozen"  # the attempt is paused, resumed after
    KILLED_WHILE_FROZEN = "killed-while-frozen"  # the same with a kill
    #: Killed while frozen, resumed after the call's deadline (a token's TTL) has passed.
    KILLED_WHILE_FROZEN_PAST_DEADLINE = "killed-while-frozen-past-deadline"

    @property
    def on_a_node(self) -> bool:
        return self in (
            Fault.LEADER_KILLED,
            Fault.NODE_KILLED,
            Fault.LEADER_PAUSED,
            Fault.LEADER_ISOLATED,
        )

    @property
    def is_zombie(self) -> bool:
        """A paused process is resumed in the cell: it must reach the database afterwards."""
        return self.startswith("zombie") or self.freezes

    @property
    def freezes(self) -> bool:
        """The invocation ends (cancelled, killed) while its attempt is paused."""
        return self in (
            Fault.CANCELLED_WHILE_FROZEN,
            Fault.KILLED_WHILE_FROZEN,
            Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE,
        )


class Expect(enum.StrEnum):
    EXACTLY_ONCE = "exactly once"
    DUPLICATE = "duplicate"
    LOST_UPDATE = "lost update"
    NOT_APPLIED = "not applied"  # the operation fails and leaves nothing behind
    APPLIED_CALL_KILLED = "applied, call killed"  # committed, then the invocation was killed
    #: Each operation as its answer says: acknowledged and applied once, or failed and applied
    #: not at all (which of the two, the timing of the fault decides).
    AS_ANSWERED = "as answered"
    #: Never twice, never an acknowledged one lost; a failed (cancelled, killed) one may be
    #: applied once: the pattern's contract leaves that to the row it marks.
    AT_MOST_ONCE = "at most once"

    @property
    def is_control(self) -> bool:
        """A negative control: the anomaly must show."""
        return self in (Expect.DUPLICATE, Expect.LOST_UPDATE)


@dataclass(frozen=True)
class Cell:
    """One scenario of the table."""

    handlers: tuple[CreditHandler, ...]
    fault: Fault
    point: str | None
    expect: Expect
    operations: int = 1
    why: str = ""
    #: The operations arrive at a steady pace across the fault instead of being held at a
    #: point (``chaos.node_faults``: the node-fault cells under load).
    load: bool = False
    #: A zombie cell whose paused process Restate is cut off from at once, not after its own
    #: timeouts (``provoke.ZombieCut``): faster, and the zombie sees the same thing.
    cut_at_once: bool = False

    @property
    def handler(self) -> CreditHandler:
        return self.handlers[0]

    @property
    def where(self) -> str:
        """The point without its handler prefix (``after-commit``), "under-load", or "-"."""
        if self.load:
            return "under-load"
        if self.point is None:
            return "-"
        return self.point.removeprefix(self.handler.name + ".")

    @property
    def id(self) -> str:
        what = (
            "+".join(h.name for h in self.handlers) if len(self.handlers) > 1 else self.handler.name
        )
        return f"{what}@{self.where}/{self.fault}"

    @property
    def races_a_lock(self) -> bool:
        """A zombie cell whose zombie is resumed while the retry waits for its lock."""
        return (
            self.fault == Fault.ZOMBIE
            and self.point is not None
            and lab_point(self.point) in OPEN_TRANSACTION
        )

    def injected(self, faults: FaultCounts) -> int:
        """How many faults of this cell's own kind struck (a kill cell counts kills, ...)."""
        f = faults
        return {
            Fault.KILL: f.service_killed,
            Fault.ZOMBIE: min(f.service_paused, f.zombies_resumed),
            Fault.ZOMBIE_AFTER_IDLE_TIMEOUT: min(f.service_paused, f.zombies_resumed),
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: min(f.service_paused, f.zombies_resumed),
            Fault.ZOMBIE_BETWEEN_PREPARE_AND_COMMIT: min(f.service_paused, f.zombies_resumed),
            Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: min(
                f.service_paused, f.zombies_resumed, f.service_killed
            ),
            Fault.OUTSIDE_WRITER: 1,  # the outside write is an operation: the ledger shows it
            Fault.RESTATE_RESTART: f.restate_killed,
            Fault.POSTGRES_RESTART: f.postgres_restarted,
            Fault.TERMINATE_CONNECTIONS: f.terminate_events,
            Fault.INVOCATION_KILLED: f.invocations_killed,
            Fault.KILL_STORM: f.service_killed,
            Fault.MIXED_STORM: f.events(),
            Fault.LEADER_KILLED: f.nodes_killed,
            Fault.NODE_KILLED: f.nodes_killed,
            Fault.LEADER_PAUSED: min(f.nodes_paused, f.nodes_resumed),
            Fault.LEADER_ISOLATED: min(f.nodes_isolated, f.nodes_healed),
            Fault.CANCELLED: f.invocations_cancelled,
            Fault.CANCELLED_WHILE_FROZEN: min(
                f.invocations_cancelled, f.service_paused, f.zombies_resumed
            ),
            Fault.KILLED_WHILE_FROZEN: min(
                f.invocations_killed, f.service_paused, f.zombies_resumed
            ),
            Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE: min(
                f.invocations_killed, f.service_paused, f.zombies_resumed
            ),
        }[self.fault]
