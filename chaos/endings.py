"""The end of an invocation through Restate's admin API while its step is in flight: a
cancellation of a live attempt, and a cancellation or a kill of one whose process is paused.

* ``cancelled``: the operation is held at the cell's point (``sleep``) in a live attempt; its
  invocation is cancelled; the handler's clean-up runs and the call answers. Proof that the
  cancellation reached the handler: the clean-up's line naming the call and ``'cancelled'``
  (``dbpatterns.exactly_once.calls.log_ending``) in a service log.
* ``ended_while_frozen``: the process pauses at the cell's point (Restate's side of its
  connection kept open and silent, so the attempt is not given up yet); the invocation is
  cancelled or killed; then Restate's side is cut, so it moves on (a retry carries the
  cancellation to the standby; a kill ends the invocation); once the call has answered, the
  paused process is resumed and lingers: a zombie of an invocation that has ended. Before the
  resume: after a kill of a prepared transaction's call, the janitor's sweep, as ``./lab janitor
  --once --grace 0`` runs it; past-the-deadline cells wait until the call's deadline (its token
  TTL after it was sent) has passed. The zombie's statements after its resume are its proof.
"""

from __future__ import annotations

import time
from datetime import timedelta

from chaos.cells import Cell, Fault
from chaos.handlers import SAME_PATTERN_AS, TWO_PHASE_COMMIT_UPDATE, CreditHandler
from chaos.logs import log_since, log_size
from chaos.points import HOLD_MS
from chaos.provoke import Provoker
from chaos.verdict import Trial
from chaos.workload import User
from dbpatterns.examples import shapes
from dbpatterns.service import janitor
from dbpatterns.stack import wait_until

#: The deadline of a past-the-deadline cell's handler: ``shapesBrief``'s token TTL.
DEADLINE = shapes.BRIEF_TTL


def _target(row: dict[str, object], handler: CreditHandler) -> bool:
    """Is ``row`` of ``sys_invocation`` a call of ``handler`` (``service[/key]/handler``)?"""
    target = str(row["target"])
    return target.startswith(handler.service + "/") and target.endswith("/" + handler.handler)


def _in_flight(provoker: Provoker, handler: CreditHandler) -> set[str]:
    rows = provoker.stack.admin.query(
        "SELECT id, target FROM sys_invocation WHERE status <> 'completed'"
        " AND status <> 'scheduled'"
    )
    return {str(r["id"]) for r in rows if _target(r, handler)}


def _endings_logged(provoker: Provoker, marks: dict[str, int], invocations: set[str]) -> int:
    """Clean-up lines (``log_ending``) since ``marks`` for calls of ``invocations`` that ended
    with a cancellation."""
    found = 0
    for slot in provoker.stack.services.slots:
        for line in log_since(slot.service.log_path, marks.get(slot.name, 0)):
            if "ended with 'cancelled'" in line and any(f"call {i}:" in line for i in invocations):
                found += 1
    return found


def _log_marks(provoker: Provoker) -> dict[str, int]:
    return {slot.name: log_size(slot.service.log_path) for slot in provoker.stack.services.slots}


def _answers(trial: Trial, users: list[User]) -> None:
    trial.notes += [f"answer: {op.status} {op.answer[:160]}" for u in users for op in u.operations]


def cancelled(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """Hold the operation at the cell's point in a live attempt; cancel its invocation."""
    assert cell.point is not None
    point, stack = cell.point, provoker.stack
    users = provoker.users_of(cell)
    earlier = _in_flight(provoker, cell.handler)
    # Held less than the harness's inactivity timeout (2 s): Restate keeps the attempt while
    # its clean-up waits for the held step.
    stack.failpoints.set({point: f"1*sleep({HOLD_MS})"})
    running = provoker.resolver.start([op for u in users for op in u.operations])
    if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
        trial.problems.append(f"the operation did not reach {point}")
        running.wait()
        return users
    invocations = _in_flight(provoker, cell.handler) - earlier
    marks = _log_marks(provoker)
    for invocation in invocations:
        stack.injector.cancel_invocation(invocation)
    running.wait()
    _answers(trial, users)
    _require_the_cancellation_reached(provoker, trial, marks, invocations)
    return users


def _require_the_cancellation_reached(
    provoker: Provoker, trial: Trial, marks: dict[str, int], invocations: set[str]
) -> None:
    reached = 0
    if wait_until(lambda: _endings_logged(provoker, marks, invocations) > 0, 10, 0.2):
        reached = _endings_logged(provoker, marks, invocations)
    trial.counts["cancellations_reached_the_handler"] = reached
    if not reached:
        trial.problems.append(
            "no clean-up logged a cancellation: it never reached the handler, the cell proves "
            "nothing about one"
        )


def ended_while_frozen(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """Pause the attempt at the cell's point; cancel or kill its invocation; let Restate move
    on; resume the paused process once the call has answered."""
    assert cell.point is not None
    stack = provoker.stack
    users = provoker.users_of(cell)
    earlier = _in_flight(provoker, cell.handler)
    running, zombie = provoker.start_until_paused(
        users, {cell.point: "1*pause"}, trial, cut_at_once=False
    )
    if zombie is None:
        return users
    invocations = _in_flight(provoker, cell.handler) - earlier
    if not invocations:
        trial.problems.append("the paused call's invocation was not found in flight")
    marks = _log_marks(provoker)
    cancel = cell.fault == Fault.CANCELLED_WHILE_FROZEN
    for invocation in invocations:
        if cancel:
            stack.injector.cancel_invocation(invocation)
        else:
            stack.injector.kill_invocation(invocation)
    trial.notes.append(f"{'cancelled' if cancel else 'killed'} while frozen: {sorted(invocations)}")
    stack.services.reset_restate_side(zombie)
    running.wait()
    _answers(trial, users)
    if cancel:
        _require_the_cancellation_reached(provoker, trial, marks, invocations)
    elif SAME_PATTERN_AS.get(cell.handler.name) == TWO_PHASE_COMMIT_UPDATE:
        _sweep_as_the_janitor(provoker, trial, invocations)
    if cell.fault == Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE:
        _wait_past_the_deadline(trial, users)
    provoker.resume_noting(zombie, trial)
    return users


def _sweep_as_the_janitor(provoker: Provoker, trial: Trial, invocations: set[str]) -> None:
    """Roll back the killed calls' prepared transactions, as the janitor does."""
    verdicts = [
        v
        for v in janitor.sweep(provoker.stack.settings, grace=timedelta(0))
        if v.invocation in invocations
    ]
    trial.notes += [f"janitor: {v}" for v in verdicts]
    trial.counts["janitor_rolled_back"] = sum(v.action == "rolled back" for v in verdicts)


def _wait_past_the_deadline(trial: Trial, users: list[User]) -> None:
    sent = min(op.sent_at or time.time() for u in users for op in u.operations)
    past = sent + DEADLINE.total_seconds() + 1.5
    time.sleep(max(0.0, past - time.time()))
    trial.notes.append(f"resuming the zombie {time.time() - sent:.1f} s after the call was sent")
