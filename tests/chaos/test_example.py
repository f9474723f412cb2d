"""The library proven on a service of its own: every exactly-once cell of the invoices example
(``dbpatterns.examples.invoices``, built only on ``dbpatterns.exactly_once``), judged by its
own ledger: ``invoices.paid`` read back as one count per payment, checked against the row's
write count and against the payment log written in the same transaction."""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Fault
from chaos.lab_cells import example_cells, example_outside_writer_cell
from chaos.runner import CellRunner
from tests.chaos import expect
from tests.chaos.test_exactly_once import zombie_reached_the_database


def cells(*faults: Fault) -> list[Cell]:
    return [c for c in example_cells() if c.fault in faults]


def cell_id(cell: Cell) -> str:
    return cell.id


@pytest.mark.parametrize("cell", cells(Fault.KILL), ids=cell_id)
def test_a_payment_is_recorded_once_when_the_service_is_killed(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(Fault.ZOMBIE), ids=cell_id)
def test_a_payment_is_recorded_once_under_a_zombie_that_reaches_the_database(
    runner: CellRunner, cell: Cell
) -> None:
    result = runner.run(cell)
    zombie_reached_the_database(result)
    expect.exactly_once(result)


@pytest.mark.parametrize("cell", cells(Fault.RESTATE_RESTART, Fault.POSTGRES_RESTART), ids=cell_id)
def test_payments_held_before_their_commit_are_recorded_once_across_a_restart(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


def test_the_versioned_payment_refuses_when_a_payment_from_outside_moved_the_invoice(
    runner: CellRunner,
) -> None:
    """A payment recorded from outside the invoice's object between its read and its write:
    the versioned payment finds another writer's mark and fails with 409; the example's own
    ledger shows the outside payment once and nothing of the refused one."""
    result = runner.run(example_outside_writer_cell())
    assert result.counts["outside_writes_inside_the_window"] == 1, result.notes
    expect.as_answered(result, failed=1)
    assert any(n.startswith("the held write's answer: 409") for n in result.notes), result.notes
