"""Faults a failpoint strikes in the service process: a kill, and a pause that leaves a zombie.

* ``kill``: the failpoint SIGKILLs the process once; the retry runs in the standby.
* ``zombie_at_point`` (and its variants after Postgres's idle-in-transaction timeout and after the
  retry's token expired): the failpoint SIGSTOPs the process once; Restate is cut off from it
  (at once, or by its own timeouts: ``ZombieCut``) and retries in the standby; the zombie is
  resumed when the retry has finished, or while the retry waits for its lock.
* ``zombie_between_prepare_and_commit`` / ``zombie_between_commit_attempts``: the two ways a
  zombie of ``twoPhaseCommit``'s prepare step can wake in the middle of a healthy retry.
"""

from __future__ import annotations

import time

from chaos.cells import Cell, Fault
from chaos.checker import invocations_not_completed
from chaos.points import (
    HOLD_MS,
    TWO_PC_AFTER_COMMIT,
    TWO_PC_BEFORE_COMMIT,
    TWO_PC_BEFORE_LEFTOVER_CHECK,
)
from chaos.provoke import Provoker, ZombieCut, ops_of
from chaos.stack import CHAOS_IDLE_IN_TRANSACTION_MS
from chaos.tokens import wait_tokens_expired
from chaos.verdict import Trial
from chaos.workload import User
from dbpatterns.stack import wait_until


def kill(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    assert cell.point is not None
    users = provoker.users_of(cell)
    provoker.stack.failpoints.set({cell.point: "1*kill"})
    provoker.resolver.run_all(ops_of(users))
    if provoker.stack.failpoints.remaining(cell.point) != 0:
        trial.problems.append(f"the failpoint {cell.point} was never reached")
    return users


def zombie_at_point(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    assert cell.point is not None
    stack = provoker.stack
    users = provoker.users_of(cell)
    earlier = provoker.invocations_not_completed()
    # A zombie racing the retry for a lock must be resumed before Postgres's idle timeout
    # ends its session, and the token-expiry control waits for the expiry: both need the
    # retry to start at once, not after Restate's own timeouts.
    at_once = (
        provoker.zombie_cut == ZombieCut.AT_ONCE
        or cell.cut_at_once
        or cell.races_a_lock
        or cell.fault == Fault.ZOMBIE_AFTER_TOKEN_EXPIRY
    )
    running, zombie = provoker.start_until_paused(
        users, {cell.point: "1*pause"}, trial, cut_at_once=at_once
    )
    if zombie is None:
        return users
    paused = time.monotonic()
    if not zombie.restate_side_reset:
        failure = _wait_restate_gave_up(provoker, earlier, timeout=40)
        if failure is None:
            trial.problems.append("Restate did not give up on the paused attempt within 40 s")
        else:
            trial.notes.append(
                f"Restate gave up on the paused attempt after "
                f"{time.monotonic() - paused:.1f} s: {failure}"
            )
        stack.services.reset_restate_side(zombie)
    if cell.races_a_lock:
        if wait_until(lambda: stack.services.sessions_waiting_for_a_lock() > 0, 10, 0.02):
            trial.counts["retry_waited_for_the_zombies_lock"] = 1
            trial.notes.append(
                f"the retry waits for the zombie's lock {time.monotonic() - paused:.1f} s "
                "after the pause: resuming the zombie now"
            )
        else:
            trial.problems.append("the retry never waited for the zombie's lock")
        stack.services.resume_zombie(zombie, linger=2.0)
        running.wait()
        return users
    # The retry runs in the standby. A zombie holding a lock the retry needs keeps it
    # waiting until Postgres ends the zombie's idle transaction; give it that long and more.
    running.wait(timeout=30)
    trial.notes.append(
        f"retry {'finished' if running.done() else 'still running'} "
        f"{time.monotonic() - paused:.1f} s after the pause "
        f"({zombie.connections_cut} connection(s) from Restate cut)"
    )
    if cell.fault == Fault.ZOMBIE_AFTER_IDLE_TIMEOUT:
        idle = CHAOS_IDLE_IN_TRANSACTION_MS / 1000 + 0.5
        time.sleep(max(0.0, paused + idle - time.monotonic()))
    if cell.fault == Fault.ZOMBIE_AFTER_TOKEN_EXPIRY:
        if not wait_tokens_expired(provoker.stack, trial, cell.handler):
            trial.problems.append("the idempotency token did not expire")
        else:
            trial.notes.append("the retry's idempotency token had expired")
    provoker.resume_noting(zombie, trial)
    running.wait()
    return users


def _wait_restate_gave_up(provoker: Provoker, earlier: set[str], timeout: float) -> str | None:
    """Until Restate records the failure of an attempt of this cell's invocation (and
    schedules another): the failure's text."""
    seen: list[str] = []

    def gave_up() -> bool:
        rows = invocations_not_completed(provoker.stack.admin)
        seen[:] = [
            str(r["last_failure"])
            for r in rows
            if r["id"] not in earlier and r.get("last_failure") is not None
        ]
        return bool(seen)

    return seen[0][:200] if wait_until(gave_up, timeout, interval=0.2) else None


# --- zombies of twoPhaseCommit's prepare step in the middle of a healthy retry -------------------


def zombie_between_prepare_and_commit(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """Attempt A freezes before its leftover check. Attempt B, in the standby, prepares,
    journals the PREPARE, and is held before its COMMIT PREPARED. A wakes: it finds B's
    prepared transaction and must leave it alone, so that B's commit succeeds."""
    stack = provoker.stack
    users = provoker.users_of(cell)
    actions = {TWO_PC_BEFORE_LEFTOVER_CHECK: "1*pause", TWO_PC_BEFORE_COMMIT: "1*sleep(4000)"}
    running, zombie = provoker.start_until_paused(users, actions, trial)
    if zombie is None:
        return users
    if wait_until(lambda: stack.failpoints.remaining(TWO_PC_BEFORE_COMMIT) == 0, 30, 0.02):
        trial.notes.append("B prepared and journaled it; B is held before COMMIT PREPARED")
    else:
        trial.problems.append("the retry never reached its COMMIT PREPARED")
    stack.services.resume_zombie(zombie, linger=1.0)
    running.wait()
    trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in ops_of(users)]
    return users


def zombie_between_commit_attempts(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """Attempt A freezes before its leftover check. Attempt B, in the standby, prepares,
    commits, and dies before Restate records the commit. While attempt C is held before its
    COMMIT PREPARED, A wakes: it finds nothing under the gid (B committed), adds the credits
    again and prepares that under the same gid. Then C runs COMMIT PREPARED gid: whatever
    it commits must not be A's transaction."""
    stack = provoker.stack
    users = provoker.users_of(cell)
    killed_before = stack.faults.service_killed
    actions = {
        TWO_PC_BEFORE_LEFTOVER_CHECK: "1*pause",
        TWO_PC_BEFORE_COMMIT: f"2*sleep({HOLD_MS * 2})",
        TWO_PC_AFTER_COMMIT: "1*kill",
    }
    running, zombie = provoker.start_until_paused(users, actions, trial)
    if zombie is None:
        return users
    c_is_held = wait_until(
        lambda: (
            stack.faults.service_killed > killed_before
            and stack.failpoints.remaining(TWO_PC_BEFORE_COMMIT) == 0
        ),
        40,
        0.02,
    )
    if not c_is_held:
        trial.problems.append("attempt B was not killed after its commit, or C never came")
    else:
        trial.notes.append("B committed and died; C is held before COMMIT PREPARED")
    stack.services.resume_zombie(zombie, linger=HOLD_MS * 2 / 1000)
    running.wait()
    trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in ops_of(users)]
    return users
