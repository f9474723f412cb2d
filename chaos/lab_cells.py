"""The cells of the lab's credit handlers and of the invoices example: a kill at every failpoint,
a zombie where SQL follows it, the faults of the other parts while operations are held, the
lost-update control, the janitor, the zombies of ``twoPhaseCommit``'s prepare step, and the
storms; each with what the pattern promises there, and why (``expectation``).
"""

from __future__ import annotations

from chaos.cells import Cell, Expect, Fault
from chaos.handlers import (
    CREDIT_HANDLERS,
    EXACTLY_ONCE_HANDLERS,
    EXAMPLE_HANDLERS,
    IDEMPOTENCY_UPDATE,
    INVOICE_PAY,
    INVOICES_PAY,
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)
from chaos.points import (
    CONDITIONAL_AFTER_READ,
    IDEMPOTENCY_AFTER_STEP,
    IDEMPOTENCY_BEFORE_CLAIM,
    NO_SQL_AFTER,
    NONE_DECLARED,
    OPEN_TRANSACTION,
    TWO_PC_BEFORE_COMMIT,
    TWO_PC_BEFORE_LEFTOVER_CHECK,
    hold_point,
    lab_point,
    points_of,
)
from dbpatterns.service import failpoints

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
