"""Every credit handler across the faults of the other parts: restate-server killed and started
again, Postgres shut down immediately and started again, the service's sessions terminated.

Four operations are held at a failpoint (``sleep``) before their commit when the fault strikes;
all four must end acknowledged and applied once, with nothing left behind.
"""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Expect, Fault
from chaos.lab_cells import restart_cells
from chaos.runner import CellRunner
from tests.chaos import expect


def cells(fault: Fault) -> list[Cell]:
    return [c for c in restart_cells() if c.fault == fault and c.expect == Expect.EXACTLY_ONCE]


def handler_name(cell: Cell) -> str:
    return cell.handler.name


@pytest.mark.parametrize("cell", cells(Fault.RESTATE_RESTART), ids=handler_name)
def test_is_exactly_once_across_a_restate_server_crash(runner: CellRunner, cell: Cell) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(Fault.POSTGRES_RESTART), ids=handler_name)
def test_is_exactly_once_across_a_postgres_immediate_restart(
    runner: CellRunner, cell: Cell
) -> None:
    expect.exactly_once(runner.run(cell))


@pytest.mark.parametrize("cell", cells(Fault.TERMINATE_CONNECTIONS), ids=handler_name)
def test_is_exactly_once_when_its_database_sessions_are_terminated(
    runner: CellRunner, cell: Cell
) -> None:
    result = runner.run(cell)
    assert result.counts["sessions_terminated"] >= 1, result.notes
    expect.exactly_once(result)
