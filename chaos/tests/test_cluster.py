"""Exactly once when a node of a three-node Restate cluster fails with calls in flight: the
node leading their partition killed, a node killed at random, the leader paused (SIGSTOP) and
resumed, a cluster-level zombie. Each cell proves its fault struck (counted by kind) and the
cluster whole again at the end, then judges every operation on the ledger; the stall the
fault caused is measured (``stall_*_ms``)."""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Fault, cluster_cells
from chaos.scenarios import CellRunner
from chaos.tests import expect
from chaos.workload import (
    IDEMPOTENCY_UPDATE,
    INVOICES_PAY,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
)

#: A few minutes of CI: every pattern across the leader's death, one across a pause and one
#: across a random node's death. ``./lab chaos --profile cluster`` runs every cell.
CI_CELLS = {
    (Fault.LEADER_KILLED, IDEMPOTENCY_UPDATE.name),
    (Fault.LEADER_KILLED, TWO_PHASE_COMMIT_UPDATE.name),
    (Fault.LEADER_KILLED, KEYED_UPDATE_CONDITIONAL.name),
    (Fault.LEADER_PAUSED, IDEMPOTENCY_UPDATE.name),
    (Fault.NODE_KILLED, INVOICES_PAY.name),
}


def cells() -> list[Cell]:
    return [c for c in cluster_cells() if (c.fault, c.handler.name) in CI_CELLS]


@pytest.mark.parametrize("cell", cells(), ids=lambda c: c.id)
def test_every_operation_is_applied_once_across_the_failure_of_a_node(
    cluster_runner: CellRunner, cell: Cell
) -> None:
    result = cluster_runner.run(cell)
    notes = "\n".join(result.notes)
    assert result.counts["nodes_ready_at_the_end"] == 3, notes
    assert result.counts["answered_before_the_fault"] == 0, notes  # all were in flight
    assert result.counts["stall_max_ms"] > 0, notes
    if cell.fault in (Fault.LEADER_KILLED, Fault.LEADER_PAUSED):
        # The failover mattered: another node ran a call again while the first attempt, the
        # failed leader's, had reached the database too.
        assert max(result.reached_db.values()) >= 2, notes
    expect.exactly_once(result, faults=1)
