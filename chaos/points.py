"""The failpoints the chaos table speaks of: which faults each gets, and where operations wait.

Cells speak of the lab's points; a point of an example handler stands for the lab handler's
point built on the same library pattern (``lab_point``), so the tables below hold for both.
The failpoints themselves are declared by the pattern code (``failpoints.CATALOGUE``).
"""

from __future__ import annotations

import dbpatterns.patterns  # noqa: F401  (declares every failpoint: fills the catalogue)
from chaos.handlers import (
    IDEMPOTENCY_UPDATE,
    KEYED_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    SAME_PATTERN_AS,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)
from dbpatterns.service import failpoints

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


def points_of(handler: CreditHandler) -> list[str]:
    """The handler's failpoints, in the order its code declares them."""
    return [name for name in failpoints.CATALOGUE if name.startswith(handler.name + ".")]


def hold_point(handler: CreditHandler) -> str:
    lab = SAME_PATTERN_AS.get(handler.name)
    if lab is not None:
        return handler.name + HOLD_POINTS[lab.name].removeprefix(lab.name)
    if handler.name in HOLD_POINTS:
        return HOLD_POINTS[handler.name]
    points = points_of(handler)
    return points[0] if points else f"{handler.name}.{NONE_DECLARED}"
