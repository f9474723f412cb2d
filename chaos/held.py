"""Faults that strike while a cell's operations are held at a failpoint (``sleep``).

* ``held``: restate-server SIGKILLed and started again, Postgres shut down immediately and
  started again, or the service's sessions terminated, while the operations wait;
* ``outside_writer`` (the lost-update control): a versioned write held after its journaled read
  while another handler writes the same row from outside the object;
* ``invocation_killed``: the invocation killed through Restate's admin API while held; then, for
  ``twoPhaseCommit``, a sweep as the janitor's, and for an idempotent handler, the token's
  expiry all the same.
"""

from __future__ import annotations

from datetime import timedelta

from chaos.cells import Cell, Expect, Fault
from chaos.checker import check_leftovers
from chaos.handlers import BRIEF_DEPOSIT, IDEMPOTENCY_UPDATE, CreditHandler
from chaos.logs import log_since, log_size
from chaos.points import HOLD_MS
from chaos.provoke import Provoker, ops_of
from chaos.tokens import token_table_and_ttl, tokens_of_this_cell
from chaos.verdict import Trial
from chaos.workload import User, create_users
from dbpatterns.exactly_once.gids import GID_PREFIX
from dbpatterns.service import janitor
from dbpatterns.stack import wait_until
from dbpatterns.testing.verdict import Outcome


def held(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    stack = provoker.stack
    users, running, _ = provoker.hold(cell, trial, HOLD_MS)
    if cell.fault == Fault.RESTATE_RESTART:
        stack.injector.restart_restate()
    elif cell.fault == Fault.POSTGRES_RESTART:
        stack.injector.restart_postgres()
    else:
        terminated = stack.injector.terminate_service_connections()
        trial.counts["sessions_terminated"] = terminated
        if terminated == 0:
            trial.problems.append("no service session to terminate")
    running.wait()
    return users


def outside_writer(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """The cell's first handler (a versioned update) is held after its journaled read while
    its second adds to the same row from outside the object: the held write then finds the
    version moved."""
    assert cell.point is not None
    stack = provoker.stack
    versioned, outsider = cell.handlers
    (user,) = create_users(stack.database_url, 1, ledger=versioned.ledger)
    held = user.operation(versioned)
    outside = user.operation(outsider)
    # Held less than the harness's inactivity timeout (2 s), so Restate does not give up on
    # the held attempt and run the write a second time.
    stack.failpoints.set({cell.point: f"1*sleep({HOLD_MS})"})
    running = provoker.resolver.start([held])
    if not wait_until(lambda: stack.failpoints.remaining(cell.point or "") == 0, 20, 0.02):
        trial.problems.append(f"{held.handler.name} never reached {cell.point}")
    provoker.resolver.run(outside)
    if running.done():
        trial.problems.append("the outside write landed after the held write: no window")
    else:
        trial.counts["outside_writes_inside_the_window"] = 1
        trial.notes.append(f"the outside write committed while {versioned.name} was held")
    running.wait()
    trial.notes.append(f"the held write's answer: {held.status} {held.answer[:160]}")
    if cell.expect == Expect.AS_ANSWERED and held.outcome != Outcome.FAILED:
        trial.problems.append(
            f"the versioned write answered {held.status}: it did not refuse the row another "
            "writer had moved"
        )
    return [user]


def invocation_killed(provoker: Provoker, cell: Cell, trial: Trial) -> list[User]:
    """Hold the operation at ``cell.point``, kill its invocation (no handler code runs any
    more, not even a cleanup). ``twoPhaseCommit``: then sweep as ``./lab janitor --once
    --grace 0`` would. ``idempotency``: then show its token expires all the same."""
    point = cell.point
    assert point is not None
    stack = provoker.stack
    users = provoker.users_of(cell)
    target = f"{cell.handler.service}/{cell.handler.handler}"
    earlier = provoker.invocations_not_completed(target)
    stack.failpoints.set({point: f"1*sleep({HOLD_MS * 4})"})
    running = provoker.resolver.start(ops_of(users))
    if not wait_until(lambda: stack.failpoints.remaining(point) == 0, 20, 0.02):
        trial.problems.append(f"the operation did not reach {point}")
        running.wait()
        return users
    killed = sorted(provoker.invocations_not_completed(target) - earlier)
    children_before = _scheduled_children(provoker, killed)
    log_marks = {slot.name: log_size(slot.service.log_path) for slot in stack.services.slots}
    for invocation in killed:
        stack.injector.kill_invocation(invocation)
    running.wait()
    trial.notes += [f"answer: {op.status} {op.answer[:160]}" for op in ops_of(users)]
    if cell.handler in (IDEMPOTENCY_UPDATE, BRIEF_DEPOSIT):
        return users + _expire_a_killed_token(
            provoker, cell.handler, trial, children_before, killed
        )
    prepared = check_leftovers(
        stack.database_url, stack.admin, settle=0, earlier=trial.earlier
    ).prepared
    listed = {i for i in killed if any(g.startswith(f"{GID_PREFIX}{i}:") for g in prepared)}
    verdicts = [
        v for v in janitor.sweep(stack.settings, grace=timedelta(0)) if v.invocation in killed
    ]
    trial.notes += [f"janitor: {v}" for v in verdicts]
    rolled_back = {v.invocation for v in verdicts if v.action == "rolled back"}
    # Each service process runs the janitor too (every DBPATTERNS_JANITOR_INTERVAL): when
    # its pass lands between the count above and this sweep, the sweep finds nothing to
    # do. Its log line naming the gid is the evidence that a janitor rolled it back.
    for slot in stack.services.slots:
        for line in log_since(slot.service.log_path, log_marks[slot.name]):
            for invocation in set(killed) - rolled_back:
                if f"janitor: {GID_PREFIX}{invocation}:" in line and "-> rolled back" in line:
                    rolled_back.add(invocation)
                    trial.notes.append(f"rolled back by {slot.name}'s own janitor: {line}")
    # Prepared after the kill: listed by the harness, or (when a service's janitor came
    # first) named by the janitor that rolled it back.
    trial.counts["prepared_before_janitor"] = len(prepared) + len(rolled_back - listed)
    trial.counts["janitor_rolled_back"] = len(rolled_back)
    return users


def _scheduled_children(provoker: Provoker, parents: list[str]) -> int:
    rows = provoker.stack.admin.query(
        "SELECT id, invoked_by_id FROM sys_invocation WHERE status = 'scheduled'"
    )
    return sum(1 for r in rows if r.get("invoked_by_id") in parents)


def _expire_a_killed_token(
    provoker: Provoker,
    handler: CreditHandler,
    trial: Trial,
    children_before: int,
    killed: list[str],
) -> list[User]:
    """A kill through Restate kills the invocation's scheduled expiry with it (a delayed
    one-way call is a child of the invocation): count that, then show that the token goes
    all the same, with the expiry of the next call, which also deletes every expired token
    (a token expires two TTLs after its call started: the deadline, and as long again)."""
    stack = provoker.stack
    trial.counts["expiries_scheduled_before_the_kill"] = children_before
    trial.counts["expiries_killed_with_it"] = children_before - _scheduled_children(
        provoker, killed
    )
    tokens = tokens_of_this_cell(provoker.stack, trial, handler)
    trial.counts["tokens_of_killed_calls"] = len(tokens)
    (next_user,) = create_users(stack.database_url, 1, ledger=handler.ledger)
    provoker.resolver.run(next_user.operation(handler))
    waited = 2 * token_table_and_ttl(provoker.stack, handler)[1].total_seconds() + 20

    def left() -> int:
        return len(tokens & tokens_of_this_cell(provoker.stack, trial, handler))

    wait_until(lambda: left() == 0, waited, 0.2)
    trial.counts["tokens_left_after_the_next_expiry"] = left()
    if trial.counts["tokens_left_after_the_next_expiry"]:
        trial.problems.append(
            f"the killed call's token is still there {waited:g} s after the next call: leaked"
        )
    return [next_user]
