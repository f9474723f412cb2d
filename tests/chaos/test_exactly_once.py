"""The exactly-once patterns under a crash and under a zombie, at every failpoint they declare.

Cells come from the failpoint catalogue: a failpoint added to one of these handlers is tested
here without a change to this file. Each cell runs one operation and asserts the counts: one
operation acknowledged, its credits applied once, the fault struck once, nothing left behind;
and, for a zombie, that it reached the database after it resumed (or, in the idle-timeout
variant, that Postgres refused its next statement).
"""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Fault
from chaos.handlers import (
    IDEMPOTENCY_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)
from chaos.lab_cells import (
    fault_cells,
    outside_writer_cell,
    stranger_commit_cell,
    zombie_between_prepare_and_commit_cell,
)
from chaos.runner import CellRunner
from chaos.verdict import CellResult
from tests.chaos import expect


def cells(handler: CreditHandler, fault: Fault) -> list[Cell]:
    return [cell for cell in fault_cells([handler]) if cell.fault == fault]


def zombie_reached_the_database(result: CellResult) -> None:
    assert result.zombie_sql is not None, result.notes
    assert result.zombie_sql.reached >= 1, result.notes


def where(cell: Cell) -> str:
    return cell.where


@pytest.mark.parametrize("cell", cells(KEYED_UPDATE_CONDITIONAL, Fault.KILL), ids=where)
def test_update_conditional_is_exactly_once_when_killed(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(KEYED_UPDATE_CONDITIONAL, Fault.ZOMBIE), ids=where)
def test_update_conditional_is_exactly_once_under_a_zombie(runner: CellRunner, cell: Cell) -> None:
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.exactly_once(result)


@pytest.mark.parametrize("cell", cells(IDEMPOTENCY_UPDATE, Fault.KILL), ids=where)
def test_idempotency_update_is_exactly_once_when_killed(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(IDEMPOTENCY_UPDATE, Fault.ZOMBIE), ids=where)
def test_idempotency_update_is_exactly_once_under_a_zombie(runner: CellRunner, cell: Cell) -> None:
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.exactly_once(result)


def test_a_zombie_restate_gave_up_on_by_its_own_timeouts_adds_once(
    faithful_cut: CellRunner,
) -> None:
    """The other zombie cells cut the paused process off from Restate at once; here Restate
    gives up on it by its inactivity and abort timeouts, as it would on a hung process."""
    (cell,) = [c for c in cells(IDEMPOTENCY_UPDATE, Fault.ZOMBIE) if c.where == "before-claim"]
    result = faithful_cut.run(cell)
    assert any("Restate gave up on the paused attempt after" in n for n in result.notes), (
        result.notes
    )
    zombie_reached_the_database(result)
    expect.exactly_once(result)


@pytest.mark.parametrize("cell", cells(TWO_PHASE_COMMIT_UPDATE, Fault.KILL), ids=where)
def test_two_phase_commit_update_is_exactly_once_when_killed(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(TWO_PHASE_COMMIT_UPDATE, Fault.ZOMBIE), ids=where)
def test_two_phase_commit_update_is_exactly_once_under_a_zombie(
    runner: CellRunner, cell: Cell
) -> None:
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.exactly_once(result)


def test_two_phase_commit_update_never_commits_what_a_zombie_prepared_again(
    runner: CellRunner,
) -> None:
    """A zombie frozen before the prepare step clears leftovers wakes after the retry's
    COMMIT PREPARED (whose step Restate did not record) and prepares again under the same gid;
    the next attempt's COMMIT PREPARED must not commit that second transaction."""
    result = runner.run(stranger_commit_cell())
    zombie_reached_the_database(result)
    expect.exactly_once(result, faults=1)


def test_two_phase_commit_update_succeeds_when_a_zombie_wakes_between_prepare_and_commit(
    runner: CellRunner,
) -> None:
    """The zombie finds the retry's journaled prepared transaction and leaves it alone: the
    call is acknowledged and its credits applied once."""
    result = runner.run(zombie_between_prepare_and_commit_cell())
    zombie_reached_the_database(result)
    expect.exactly_once(result)


@pytest.mark.parametrize(
    "handler", [IDEMPOTENCY_UPDATE, TWO_PHASE_COMMIT_UPDATE], ids=lambda h: h.name
)
def test_a_zombie_holding_a_transaction_is_stopped_by_the_idle_timeout_alone(
    runner: CellRunner, handler: CreditHandler
) -> None:
    """The variant where Postgres, not the pattern, keeps the attempts apart: the zombie's
    session is gone when it resumes, so its next statement is refused."""
    (cell,) = cells(handler, Fault.ZOMBIE_AFTER_IDLE_TIMEOUT)
    result = runner.run(cell)
    assert result.zombie_sql is not None, result.notes
    assert result.zombie_sql.refused >= 1, result.notes
    assert result.zombie_sql.reached == 0, result.notes
    expect.exactly_once(result)


def test_update_conditional_refuses_when_another_handler_writes_the_user(
    runner: CellRunner,
) -> None:
    """The write finds the version moved by ``idempotency.update`` and another writer's mark:
    409, nothing applied; the outside write stays, once. Before the mark, this was the lab's
    lost-update control: an acknowledged update that was not there."""
    result = runner.run(outside_writer_cell())
    assert result.counts["outside_writes_inside_the_window"] == 1, result.notes
    expect.as_answered(result, failed=1)
    assert any(n.startswith("the held write's answer: 409") for n in result.notes), result.notes
