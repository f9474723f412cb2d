"""The exactly-once patterns under a crash and under a zombie, at every failpoint they declare.

Cells come from the failpoint catalogue: a failpoint added to one of these handlers is tested
here without a change to this file. Each cell runs one operation and asserts the counts: one
operation acknowledged, its credits applied once, the fault struck once, nothing left behind.
"""

from __future__ import annotations

import pytest

from chaos.scenarios import Cell, CellRunner, Fault, fault_cells, stranger_commit_cell
from chaos.tests import expect
from chaos.workload import (
    IDEMPOTENCY_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
    CreditHandler,
)


def cells(handler: CreditHandler, fault: Fault) -> list[Cell]:
    return [cell for cell in fault_cells([handler]) if cell.fault == fault]


def where(cell: Cell) -> str:
    return cell.where


@pytest.mark.parametrize("cell", cells(KEYED_UPDATE_CONDITIONAL, Fault.KILL), ids=where)
def test_update_conditional_is_exactly_once_when_killed(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(KEYED_UPDATE_CONDITIONAL, Fault.ZOMBIE), ids=where)
def test_update_conditional_is_exactly_once_under_a_zombie(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(IDEMPOTENCY_UPDATE, Fault.KILL), ids=where)
def test_idempotency_update_is_exactly_once_when_killed(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(IDEMPOTENCY_UPDATE, Fault.ZOMBIE), ids=where)
def test_idempotency_update_is_exactly_once_under_a_zombie(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(TWO_PHASE_COMMIT_UPDATE, Fault.KILL), ids=where)
def test_two_phase_commit_update_is_exactly_once_when_killed(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(TWO_PHASE_COMMIT_UPDATE, Fault.ZOMBIE), ids=where)
def test_two_phase_commit_update_is_exactly_once_under_a_zombie(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


def test_two_phase_commit_update_never_commits_what_a_zombie_prepared_again(
    runner: CellRunner,
) -> None:
    """A zombie frozen before the prepare step clears leftovers wakes after the retry's
    COMMIT PREPARED (whose step Restate did not record) and prepares again under the same gid;
    the next attempt's COMMIT PREPARED must not commit that second transaction."""
    expect.exactly_once(runner.run(stranger_commit_cell()))
