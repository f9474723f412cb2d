"""The chaos table at the library's API surface: the shapes example (``dbpatterns.examples.shapes``)
under the faults of the lab's cells, and under the end of an invocation through the admin API
while its step is in flight.

The shapes are what users' handlers do and the lab's one-call credit handlers do not: two calls
of a pattern in one invocation (one after the other, and at once), results that are ``None``, an
isolation level, tables and a gid prefix of their own, two services on one token table with
different TTLs. Each is killed where its pattern's retry must find the commit; the shapes of two
calls are also paused where their zombie must race the retry (cut off from Restate at once, so
the cells stay short); a kill storm crosses every point of every shape.

The end of an invocation (``chaos.endings``): a cancellation of a live attempt, held in its step;
a cancellation or a kill while the attempt is frozen (its process paused), the zombie resumed
afterwards. What each pattern promises then (its module says why):

* ``idempotent_transaction``: an error answer is final (the clean-up marks the token failed, a
  late attempt finds the mark and does nothing); a kill leaves the outcome to the token row, and
  a zombie resumed past the call's deadline is refused by the fence;
* ``prepared_transaction``: an error answer is final (rolled back; only the commit step
  commits); after a kill the janitor rolls the prepared transaction back, and the zombie's
  commit finds it gone;
* ``versioned_update``: a success answer is true; after a cancellation or a kill, a frozen
  attempt may still land its write, marked with the call: the limit the pattern admits.

And two controls on the shapes' ledger: the versioned write refuses (409) when an outside deposit
moved the version, so nothing is lost; the same write that does not look at whether its UPDATE
matched (``depositUnchecked``, a user's mistake kept on purpose) answers 200 for a deposit that
is not there, and the ledger must say so.
"""

from __future__ import annotations

from chaos.cells import Cell, Expect, Fault
from chaos.handlers import (
    ACCOUNT_DEPOSIT,
    ACCOUNT_DEPOSIT_UNCHECKED,
    BRIEF_DEPOSIT,
    DEPOSIT_NOTHING,
    IDEMPOTENCY_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    PREPARE_MAYBE,
    SAME_PATTERN_AS,
    SHAPE_HANDLERS,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)
from chaos.lab_cells import expectation

#: Where each pattern is killed: where its retry must find what an earlier attempt committed.
KILL_AT = {
    IDEMPOTENCY_UPDATE.name: ("after-commit",),
    TWO_PHASE_COMMIT_UPDATE.name: ("after-commit",),
    KEYED_UPDATE_CONDITIONAL.name: ("after-commit",),
}
#: Where each pattern is paused: its zombie wakes to a retry that went on without it.
PAUSE_AT = {
    IDEMPOTENCY_UPDATE.name: "before-claim",
    TWO_PHASE_COMMIT_UPDATE.name: "before-leftover-check",
    KEYED_UPDATE_CONDITIONAL.name: "before-write",
}
#: The shapes of two calls in one invocation, where a retry's calls must each find their own
#: commit and a zombie's calls each their own retry: also killed after PREPARE (the retry adopts
#: what each call prepared) and paused. A shape of one call behaves at these points as the lab's
#: handler of its pattern does, whose cells these already are (``chaos.cells``).
TWO_CALLS = {h.name for h in SHAPE_HANDLERS if h.applications == 2} | {ACCOUNT_DEPOSIT.name}


def _point(handler: CreditHandler, where: str) -> str:
    return f"{handler.name}.{where}"


def shape_cells() -> list[Cell]:
    """Every shape killed where its retry must find the commit; the shapes of two calls also
    killed after PREPARE, and paused as a zombie."""
    cells = []
    for handler in SHAPE_HANDLERS:
        pattern = SAME_PATTERN_AS[handler.name].name
        kill_at: tuple[str, ...] = KILL_AT[pattern]
        if handler.name in TWO_CALLS and pattern == TWO_PHASE_COMMIT_UPDATE.name:
            kill_at = ("after-prepare", *kill_at)
        for where in kill_at:
            point = _point(handler, where)
            expect, why = expectation(handler, point, Fault.KILL)
            cells.append(Cell((handler,), Fault.KILL, point, expect, why=why))
        if handler.name not in TWO_CALLS:
            continue
        point = _point(handler, PAUSE_AT[pattern])
        expect, why = expectation(handler, point, Fault.ZOMBIE)
        cells.append(Cell((handler,), Fault.ZOMBIE, point, expect, why=why, cut_at_once=True))
    return cells


def ending_cells() -> list[Cell]:
    """Each pattern's call cancelled while alive, cancelled and killed while frozen."""
    idem, prep, vers = DEPOSIT_NOTHING, PREPARE_MAYBE, ACCOUNT_DEPOSIT
    return [
        Cell(
            (idem,),
            Fault.CANCELLED,
            _point(idem, "before-commit"),
            Expect.AS_ANSWERED,
            why="cancelled while its transaction is open in a live attempt: the clean-up waits "
            "for the step and answers with its result if it committed; if Restate gave up on "
            "the waiting attempt first, the transaction rolled back and the answer is 409",
        ),
        Cell(
            (idem,),
            Fault.CANCELLED_WHILE_FROZEN,
            _point(idem, "before-claim"),
            Expect.AS_ANSWERED,
            why="frozen before its transaction, cancelled: a 409 marks the token failed first, "
            "so the zombie finds the mark and does nothing; a 200 means the retry committed it",
        ),
        Cell(
            (idem,),
            Fault.KILLED_WHILE_FROZEN,
            _point(idem, "before-claim"),
            Expect.APPLIED_CALL_KILLED,
            why="frozen before its transaction, killed: the zombie, resumed before the call's "
            "deadline, commits once; the caller heard of the kill, the token row of the commit",
        ),
        Cell(
            (BRIEF_DEPOSIT,),
            Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE,
            _point(BRIEF_DEPOSIT, "before-claim"),
            Expect.NOT_APPLIED,
            why="frozen before its transaction, killed, resumed past the call's deadline (a 4 s "
            "TTL): the fence refuses the zombie's transaction (22023), nothing is written",
        ),
        Cell(
            (prep,),
            Fault.CANCELLED,
            _point(prep, "after-prepare"),
            Expect.NOT_APPLIED,
            why="cancelled with its transaction prepared by a live attempt: the clean-up waits "
            "for the prepare step, then rolls the transaction back",
        ),
        Cell(
            (prep,),
            Fault.CANCELLED_WHILE_FROZEN,
            _point(prep, "before-commit"),
            Expect.AS_ANSWERED,
            why="frozen before COMMIT PREPARED, cancelled: a 409 means the clean-up rolled it "
            "back and the zombie's commit finds it gone; a 200, that the retry committed it",
        ),
        Cell(
            (prep,),
            Fault.KILLED_WHILE_FROZEN,
            _point(prep, "before-commit"),
            Expect.NOT_APPLIED,
            why="frozen before COMMIT PREPARED, killed: the janitor rolls the prepared "
            "transaction back, and the zombie's commit then finds it gone",
        ),
        Cell(
            (vers,),
            Fault.CANCELLED,
            _point(vers, "before-write"),
            Expect.AS_ANSWERED,
            why="cancelled while its write waits in a live attempt: the clean-up waits for it, "
            "and answers with the state if the row bears the call's mark, 409 if not",
        ),
        Cell(
            (vers,),
            Fault.CANCELLED_WHILE_FROZEN,
            _point(vers, "before-write"),
            Expect.AT_MOST_ONCE,
            why="frozen before its write, cancelled: the zombie's write may land after the 409, "
            "on the version it read, marked with the call: the limit the pattern admits",
        ),
        Cell(
            (vers,),
            Fault.KILLED_WHILE_FROZEN,
            _point(vers, "before-write"),
            Expect.APPLIED_CALL_KILLED,
            why="frozen before its write, killed: the zombie's write lands on the version it "
            "read, marked with the call, after the caller heard of the kill",
        ),
    ]


def deadline_cells() -> list[Cell]:
    """The brief TTL's service: a zombie past its call's deadline, a token after a kill."""
    return [
        Cell(
            (BRIEF_DEPOSIT,),
            Fault.ZOMBIE_AFTER_TOKEN_EXPIRY,
            _point(BRIEF_DEPOSIT, "before-claim"),
            Expect.EXACTLY_ONCE,
            why="the zombie wakes after the retry's token expired: its transaction finds no "
            "token, and the deadline's fence refuses it (22023): applied once, by the retry",
            cut_at_once=True,
        ),
        Cell(
            (BRIEF_DEPOSIT,),
            Fault.INVOCATION_KILLED,
            _point(BRIEF_DEPOSIT, "after-step"),
            Expect.APPLIED_CALL_KILLED,
            why="killed through Restate after its transaction was journaled: the deposit "
            "stays, once; the kill takes the scheduled expiry with it, and the next call's "
            "expiry, which deletes every expired token, removes the token all the same",
        ),
    ]


def control_cells() -> list[Cell]:
    """The versioned write refuses an outside writer's version; unchecked, it loses itself."""
    return [
        Cell(
            (ACCOUNT_DEPOSIT, DEPOSIT_NOTHING),
            Fault.OUTSIDE_WRITER,
            _point(ACCOUNT_DEPOSIT, "after-read"),
            Expect.AS_ANSWERED,
            operations=2,
            why="a deposit from outside the object lands between the versioned read and its "
            "write: the write finds another writer's mark and fails with 409, nothing lost",
        ),
        Cell(
            (ACCOUNT_DEPOSIT_UNCHECKED, DEPOSIT_NOTHING),
            Fault.OUTSIDE_WRITER,
            _point(ACCOUNT_DEPOSIT_UNCHECKED, "after-read"),
            Expect.LOST_UPDATE,
            operations=2,
            why="the same write answering with the state it meant to write, without looking "
            "at whether its UPDATE matched: 200 for a deposit that is not there, the lost "
            "update the ledger must show",
        ),
    ]


def storm_cell(operations: int = 64) -> Cell:
    return Cell(
        tuple(SHAPE_HANDLERS),
        Fault.KILL_STORM,
        None,
        Expect.EXACTLY_ONCE,
        operations,
        why="every fault point of every shape kills at random, several operations per account",
    )


def surface_cells(storm_operations: int = 64) -> list[Cell]:
    return [
        *shape_cells(),
        *ending_cells(),
        *deadline_cells(),
        *control_cells(),
        storm_cell(storm_operations),
    ]
