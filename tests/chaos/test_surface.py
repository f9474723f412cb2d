"""The library at its API surface under faults (``chaos.surface``): the shapes users' handlers
take, killed and paused where their patterns must hold; the end of an invocation (cancelled
while alive, cancelled or killed while frozen) with what each pattern promises then; a zombie
past its call's deadline; and the versioned write refusing an outside writer, with its
negative control. Each cell asserts its fault struck before its counts."""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Fault
from chaos.handlers import ACCOUNT_DEPOSIT, PREPARE_MAYBE
from chaos.runner import CellRunner
from chaos.surface import (
    control_cells,
    deadline_cells,
    ending_cells,
    shape_cells,
    storm_cell,
)
from chaos.verdict import FENCE_SQLSTATE
from tests.chaos import expect
from tests.chaos.test_exactly_once import zombie_reached_the_database


def cell_id(cell: Cell) -> str:
    return cell.id


def endings(fault: Fault) -> list[Cell]:
    return [c for c in ending_cells() if c.fault == fault]


@pytest.mark.parametrize("cell", [c for c in shape_cells() if c.fault == Fault.KILL], ids=cell_id)
def test_every_shape_applies_each_call_once_when_the_service_is_killed(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", [c for c in shape_cells() if c.fault == Fault.ZOMBIE], ids=cell_id)
def test_every_shape_applies_each_call_once_under_a_zombie_that_reaches_the_database(
    runner: CellRunner, cell: Cell
) -> None:
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.exactly_once(result)


@pytest.mark.parametrize("cell", endings(Fault.CANCELLED), ids=cell_id)
def test_a_cancellation_of_a_live_attempt_is_answered_as_it_ended(
    runner: CellRunner, cell: Cell
) -> None:
    """The clean-up waits for the step still running here: a transaction that commits is
    answered with its result, one that does not with 409; a prepared one is rolled back."""
    result = runner.run(cell)
    assert result.counts["cancellations_reached_the_handler"] >= 1, result.notes
    if cell.handler == PREPARE_MAYBE:
        expect.not_applied(result)
    else:
        expect.as_answered(result)


@pytest.mark.parametrize("cell", endings(Fault.CANCELLED_WHILE_FROZEN), ids=cell_id)
def test_a_cancellation_while_the_attempt_is_frozen_keeps_its_answer_true(
    runner: CellRunner, cell: Cell
) -> None:
    """The zombie resumes after the call answered: an idempotent or prepared call's answer
    stays true (its clean-up fenced the call first); a versioned call's zombie may land its
    write after a 409, the limit that pattern admits."""
    result = runner.run(cell)
    assert result.counts["cancellations_reached_the_handler"] >= 1, result.notes
    zombie_reached_the_database(result)
    if cell.handler == ACCOUNT_DEPOSIT:
        expect.at_most_once(result)
    else:
        expect.as_answered(result)


def test_a_kill_while_frozen_leaves_an_idempotent_call_to_commit_once_before_its_deadline(
    runner: CellRunner,
) -> None:
    (cell, *_) = [
        c for c in endings(Fault.KILLED_WHILE_FROZEN) if c.handler.name.startswith("shapes.deposit")
    ]
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.applied_call_killed(result, others=0)


def test_a_kill_while_frozen_past_the_deadline_is_refused_by_the_fence(
    runner: CellRunner,
) -> None:
    (cell,) = endings(Fault.KILLED_WHILE_FROZEN_PAST_DEADLINE)
    result = runner.run(cell)
    assert result.zombie_sql is not None, result.notes
    assert FENCE_SQLSTATE in result.zombie_sql.errors, result.notes
    expect.not_applied(result)


def test_a_kill_while_frozen_before_commit_prepared_is_rolled_back_by_the_janitor(
    runner: CellRunner,
) -> None:
    (cell,) = [c for c in endings(Fault.KILLED_WHILE_FROZEN) if c.handler == PREPARE_MAYBE]
    result = runner.run(cell)
    assert result.counts["janitor_rolled_back"] == 1, result.notes
    zombie_reached_the_database(result)
    expect.not_applied(result)


def test_a_kill_while_frozen_lets_a_versioned_write_land_marked_with_its_call(
    runner: CellRunner,
) -> None:
    (cell,) = [c for c in endings(Fault.KILLED_WHILE_FROZEN) if c.handler == ACCOUNT_DEPOSIT]
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.applied_call_killed(result, others=0)


def test_a_zombie_that_wakes_after_its_token_expired_is_refused_by_the_deadline(
    runner: CellRunner,
) -> None:
    """Before the deadline, this zombie committed its work a second time (the hole a TTL alone
    leaves open); now its transaction finds no token, reaches the fence past the deadline, and
    is refused."""
    (cell, _) = deadline_cells()
    result = runner.run(cell)
    assert result.zombie_sql is not None, result.notes
    assert FENCE_SQLSTATE in result.zombie_sql.errors, result.notes
    expect.exactly_once(result)


def test_a_killed_calls_token_expires_with_the_next_calls_expiry(runner: CellRunner) -> None:
    """The kill takes the scheduled expiry with it (counted); the next call's expiry, which
    deletes every expired token, removes the killed call's token all the same."""
    (_, cell) = deadline_cells()
    result = runner.run(cell)
    assert result.counts["expiries_killed_with_it"] == 1, result.notes
    assert result.counts["tokens_of_killed_calls"] == 1, result.notes
    expect.applied_call_killed(result)
    assert result.counts["tokens_left_after_the_next_expiry"] == 0, result.notes


def test_the_versioned_write_refuses_when_an_outside_deposit_moved_the_account(
    runner: CellRunner,
) -> None:
    (cell, _) = control_cells()
    result = runner.run(cell)
    assert result.counts["outside_writes_inside_the_window"] == 1, result.notes
    expect.as_answered(result, failed=1)


def test_every_shape_applies_each_call_once_under_a_kill_storm(runner: CellRunner) -> None:
    expect.exactly_once(runner.run(storm_cell()), faults=None)
