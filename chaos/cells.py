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
a failpoint added to a handler gets its cells without touching this file.

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
from chaos.handlers import (
    CREDIT_HANDLERS,
    EXACTLY_ONCE_HANDLERS,
    EXAMPLE_HANDLERS,
    IDEMPOTENCY_UPDATE,
    INVOICE_PAY,
    INVOICES_PAY,
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    SAME_PATTERN_AS,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)
from dbpatterns.service import failpoints


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


IDEMPOTENCY_BEFORE_CLAIM = "idempotency.update.before-claim"
IDEMPOTENCY_AFTER_STEP = "idempotency.update.after-step"
TWO_PC_BEFORE_LEFTOVER_CHECK = "twoPhaseCommit.update.before-leftover-check"
TWO_PC_BEFORE_COMMIT = "twoPhaseCommit.update.before-commit"
TWO_PC_AFTER_COMMIT = "twoPhaseCommit.update.after-commit"
CONDITIONAL_AFTER_READ = "keyed.updateConditional.after-read"

#: Points after which the attempt runs no more SQL: a zombie paused there has nothing left to
#: do in the database when it resumes, so the point gets a kill cell and no zombie cell.
NO_SQL_AFTER = frozenset(
    {
        "keyed.update.after-commit",
        "keyed.updateConditional.after-commit",
        "idempotency.update.after-commit",
        IDEMPOTENCY_AFTER_STEP,
        "twoPhaseCommit.update.after-prepare",
        TWO_PC_AFTER_COMMIT,
    }
)
#: Points where the attempt holds a transaction open (and row locks): the retry waits for the
#: zombie, so the zombie races it only if resumed while the retry waits, before Postgres's
#: idle-in-transaction timeout ends the zombie's session. Both variants get a cell.
OPEN_TRANSACTION = frozenset(
    {"idempotency.update.before-commit", "twoPhaseCommit.update.before-prepare"}
)


def lab_point(point: str) -> str:
    """For a point of the example service, the point of the lab handler built on the same
    library pattern (``invoices.pay.after-commit`` -> ``idempotency.update.after-commit``): the
    tables below speak of the lab's points, and hold for both."""
    for name, lab in SAME_PATTERN_AS.items():
        if point.startswith(name + "."):
            return lab.name + point.removeprefix(name)
    return point


#: Where operations are held (``sleep``) while restate-server or Postgres is restarted: a point
#: inside the database transaction where the handler has one, else just before the write.
HOLD_POINTS = {
    KEYED_UPDATE.name: "keyed.update.before-write",
    KEYED_UPDATE_CONDITIONAL.name: "keyed.updateConditional.before-write",
    IDEMPOTENCY_UPDATE.name: "idempotency.update.before-commit",
    # Prepared (and journaled) but not committed: the prepared transaction must outlive the
    # fault (it survives a Postgres restart and the end of its session) and be committed after.
    TWO_PHASE_COMMIT_UPDATE.name: TWO_PC_BEFORE_COMMIT,
}
HOLD_MS = 1500
#: Stands in for the point of a handler that declares none (its cells then fail, saying so).
NONE_DECLARED = "(no failpoint declared)"

#: Why a kill at a point is harmless, where the catalogue's text speaks of another fault.
KILL_WHY = {
    IDEMPOTENCY_BEFORE_CLAIM: "nothing written yet: the retry claims the token and adds once",
    TWO_PC_BEFORE_LEFTOVER_CHECK: "nothing prepared yet: the retry prepares and commits once",
    IDEMPOTENCY_AFTER_STEP: "the transaction is journaled: the retry replays it and adds nothing",
}
#: What the zombie does in the database after it resumes, and why that adds nothing.
ZOMBIE_WHY = {
    "keyed.update.before-write": "the zombie's UPDATE runs after the retry's: both write",
    CONDITIONAL_AFTER_READ: "the zombie's conditional UPDATE finds the version moved on: no-op",
    "keyed.updateConditional.before-write": "the zombie's conditional UPDATE finds the version "
    "moved on: no-op",
    IDEMPOTENCY_BEFORE_CLAIM: "the zombie finds the retry's token and adds nothing",
    "idempotency.update.before-commit": "the retry waits on the zombie's token row; the zombie "
    "commits, the retry then finds the token and adds nothing",
    "twoPhaseCommit.update.before-prepare": "the zombie prepares while the retry waits on its "
    "row lock; the next attempt adopts that prepared transaction and commits it once",
    TWO_PC_BEFORE_LEFTOVER_CHECK: "the zombie wakes after the invocation committed: its result row "
    "collides with the committed one, so it rolls back and prepares nothing",
    TWO_PC_BEFORE_COMMIT: "the zombie's COMMIT PREPARED finds the retry committed: done, once",
}
IDLE_TIMEOUT_WHY = (
    "Postgres's idle-in-transaction timeout ended the zombie's transaction (it held the retry's "
    "lock); its next statement after resuming fails: the timeout, not the pattern, saves it"
)


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
    #: timeouts (``scenarios.ZombieCut``): faster, and the zombie sees the same thing.
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


def points_of(handler: CreditHandler) -> list[str]:
    """The handler's failpoints, in the order its code declares them."""
    return [name for name in failpoints.CATALOGUE if name.startswith(handler.name + ".")]


def _promise(point: str) -> str:
    return failpoints.CATALOGUE.get(point, "").partition(" -- ")[2] or "its guarantee"


def expectation(handler: CreditHandler, point: str, fault: Fault) -> tuple[Expect, str]:
    """What the pattern promises at ``point`` under ``fault``, and why."""
    point = lab_point(point)
    if fault == Fault.ZOMBIE_AFTER_IDLE_TIMEOUT:
        return Expect.EXACTLY_ONCE, IDLE_TIMEOUT_WHY
    if handler.exactly_once:
        if fault == Fault.KILL:
            return Expect.EXACTLY_ONCE, KILL_WHY.get(point) or _promise(point)
        return Expect.EXACTLY_ONCE, ZOMBIE_WHY.get(point, "the retry and the zombie both run")
    where = point.removeprefix(handler.name + ".")
    if fault == Fault.KILL and where == "after-commit":
        return Expect.DUPLICATE, "committed, not journaled: the retry writes again"
    if fault == Fault.KILL:
        return Expect.EXACTLY_ONCE, "nothing committed before the crash: the retry writes once"
    return Expect.DUPLICATE, ZOMBIE_WHY.get(point, "the retry and the zombie both write")


def fault_cells(handlers: list[CreditHandler] | None = None) -> list[Cell]:
    """Kill at every failpoint of every credit handler; a zombie where SQL follows the point."""
    cells = []
    for handler in handlers or CREDIT_HANDLERS:
        # A handler that declares no failpoint yet still gets its cells: they fail, saying so.
        for point in points_of(handler) or [f"{handler.name}.{NONE_DECLARED}"]:
            faults = [Fault.KILL]
            if lab_point(point) not in NO_SQL_AFTER:
                faults.append(Fault.ZOMBIE)
            if lab_point(point) in OPEN_TRANSACTION:
                faults.append(Fault.ZOMBIE_AFTER_IDLE_TIMEOUT)
            for fault in faults:
                expect, why = expectation(handler, point, fault)
                cells.append(Cell((handler,), fault, point, expect, why=why))
    return cells


def outside_writer_cell() -> Cell:
    return Cell(
        (KEYED_UPDATE_CONDITIONAL, IDEMPOTENCY_UPDATE),
        Fault.OUTSIDE_WRITER,
        CONDITIONAL_AFTER_READ,
        Expect.AS_ANSWERED,
        operations=2,
        why="idempotency.update writes the user between updateConditional's read and its "
        "write: the write finds the version moved and another writer's mark, and fails with "
        "409 instead of losing the update behind a 200",
    )


def hold_point(handler: CreditHandler) -> str:
    lab = SAME_PATTERN_AS.get(handler.name)
    if lab is not None:
        return handler.name + HOLD_POINTS[lab.name].removeprefix(lab.name)
    if handler.name in HOLD_POINTS:
        return HOLD_POINTS[handler.name]
    points = points_of(handler)
    return points[0] if points else f"{handler.name}.{NONE_DECLARED}"


def restart_cells(operations: int = 4, handlers: list[CreditHandler] | None = None) -> list[Cell]:
    """Every credit handler (or ``handlers``) across the faults of the other parts, held where
    nothing has committed yet; plus, for the lab's handlers, ``keyed.update`` held after its
    commit while restate-server dies (the same hole as a crash of the service there, from the
    other side)."""
    cells = []
    if handlers is None:
        cells.append(
            Cell(
                (KEYED_UPDATE,),
                Fault.RESTATE_RESTART,
                "keyed.update.after-commit",
                Expect.DUPLICATE,
                1,
                "restate-server dies before it records the committed step: the retry writes again",
            )
        )
    for fault in (Fault.RESTATE_RESTART, Fault.POSTGRES_RESTART, Fault.TERMINATE_CONNECTIONS):
        for handler in handlers or CREDIT_HANDLERS:
            why = "held before its commit: nothing committed when the fault strikes"
            cells.append(
                Cell((handler,), fault, hold_point(handler), Expect.EXACTLY_ONCE, operations, why)
            )
    return cells


def example_outside_writer_cell() -> Cell:
    return Cell(
        (INVOICE_PAY, INVOICES_PAY),
        Fault.OUTSIDE_WRITER,
        f"{INVOICE_PAY.name}.after-read",
        Expect.AS_ANSWERED,
        operations=2,
        why="invoices.pay records a payment between invoice.pay's read and its write: the "
        "versioned write finds another writer's mark and fails with 409, nothing lost",
    )


def example_cells() -> list[Cell]:
    """The library proven on a service of its own (``dbpatterns.examples.invoices``): every
    exactly-once cell of its handlers, judged by its own ledger (``invoices`` and the payment
    log written in the same transaction), and the versioned update refusing an outside write."""
    return [
        *fault_cells(EXAMPLE_HANDLERS),
        *restart_cells(handlers=EXAMPLE_HANDLERS),
        example_outside_writer_cell(),
    ]


def janitor_cell() -> Cell:
    return Cell(
        (TWO_PHASE_COMMIT_UPDATE,),
        Fault.INVOCATION_KILLED,
        TWO_PC_BEFORE_COMMIT,
        Expect.NOT_APPLIED,
        why="killed through Restate while prepared: no handler code runs any more; the janitor "
        "(`./lab janitor`) rolls the prepared transaction back",
    )


def zombie_between_prepare_and_commit_cell() -> Cell:
    return Cell(
        (TWO_PHASE_COMMIT_UPDATE,),
        Fault.ZOMBIE_BETWEEN_PREPARE_AND_COMMIT,
        TWO_PC_BEFORE_LEFTOVER_CHECK,
        Expect.EXACTLY_ONCE,
        why="a zombie wakes after the retry journaled its PREPARE, before its COMMIT: it adopts "
        "the retry's prepared transaction and rolls nothing back, so the call still succeeds",
    )


def stranger_commit_cell() -> Cell:
    return Cell(
        (TWO_PHASE_COMMIT_UPDATE,),
        Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS,
        TWO_PC_BEFORE_LEFTOVER_CHECK,
        Expect.EXACTLY_ONCE,
        why="a zombie wakes after the retry's COMMIT PREPARED, whose step was not journaled "
        "(killed): its result row collides with the committed one, so it prepares nothing, and "
        "the next attempt finds the transaction committed (were the row swept, the commit step "
        "would still commit only the xid it journaled)",
    )


def kill_storm_cell(operations: int = 200) -> Cell:
    return Cell(
        tuple(EXACTLY_ONCE_HANDLERS),
        Fault.KILL_STORM,
        None,
        Expect.EXACTLY_ONCE,
        operations,
        why="every failpoint of the exactly-once handlers kills at random, several ops per user",
    )


def mixed_storm_cell(operations: int) -> Cell:
    return Cell(
        tuple(EXACTLY_ONCE_HANDLERS),
        Fault.MIXED_STORM,
        None,
        Expect.EXACTLY_ONCE,
        operations,
        why="kills, zombies, restate-server restarts (in a cluster: node kills, pauses and "
        "partitions), Postgres restarts, terminated sessions",
    )


#: The handlers whose calls are in flight when a node of the cluster fails: one per library
#: pattern of the lab, and the example's idempotent transaction.
CLUSTER_HANDLERS = [
    IDEMPOTENCY_UPDATE,
    TWO_PHASE_COMMIT_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    INVOICES_PAY,
]
NODE_WHY = {
    Fault.LEADER_KILLED: "the leader of the calls' partition dies with the calls held before "
    "their commit: its follower takes over and invokes them again, while the attempts the dead "
    "node started still run in the service",
    Fault.NODE_KILLED: "a node dies with calls in flight through every ingress: calls that "
    "entered through it are asked again through the next node",
    Fault.LEADER_PAUSED: "the leader hangs (SIGSTOP) with the calls held: its partitions move, "
    "the calls are invoked again, and the paused node, resumed, must not act on them twice",
    Fault.LEADER_ISOLATED: "the leader is cut off from its peers and the service with the "
    "calls held: their attempts commit in the database while the others elect a new leader, "
    "which invokes them again; healed, the old leader must not act on them twice",
}


def cluster_cells(operations: int = 4) -> list[Cell]:
    """Every exactly-once pattern across the failure of one node of a three-node cluster."""
    return [
        Cell((h,), fault, hold_point(h), Expect.EXACTLY_ONCE, operations, NODE_WHY[fault])
        for fault in (
            Fault.LEADER_KILLED,
            Fault.NODE_KILLED,
            Fault.LEADER_PAUSED,
            Fault.LEADER_ISOLATED,
        )
        for h in CLUSTER_HANDLERS
    ]


#: Under load: calls per second, seconds of calls before the fault, and after it (long enough
#: for the slowest failover measured, a partition's, and the recovery after it).
LOAD_RATE = 12.0
LOAD_BEFORE_S = 6.0
LOAD_AFTER_S = 54.0
LOAD_WHY = (
    "calls arrive at a steady pace through every node's ingress while the node fails: how far "
    "the completions per second fall and how long until they are back, with every call "
    "applied once"
)


def cluster_load_cells() -> list[Cell]:
    """``idempotency.update`` under a steady load across each kind of node failure."""
    operations = round(LOAD_RATE * (LOAD_BEFORE_S + LOAD_AFTER_S))
    return [
        Cell(
            (IDEMPOTENCY_UPDATE,), fault, None, Expect.EXACTLY_ONCE, operations, LOAD_WHY, load=True
        )
        for fault in (Fault.LEADER_KILLED, Fault.LEADER_PAUSED, Fault.LEADER_ISOLATED)
    ]
