"""A storm of operations on the exactly-once handlers while their failpoints kill at random."""

from __future__ import annotations

from chaos.lab_cells import kill_storm_cell
from chaos.runner import CellRunner
from tests.chaos import expect

STORM_OPERATIONS = 200


def test_exactly_once_handlers_stay_exact_through_a_random_kill_storm(runner: CellRunner) -> None:
    result = runner.run(kill_storm_cell(STORM_OPERATIONS))
    expect.exactly_once(result, faults=None)
    assert result.ledger.operations == STORM_OPERATIONS
    assert len(result.ledger.applied) == STORM_OPERATIONS  # every operation decoded on its own
    assert result.ledger.applications() == {1: STORM_OPERATIONS}
