"""Exactly once when a node of a three-node Restate cluster fails with calls in flight: the
node leading their partition killed, a node killed at random, the leader paused (SIGSTOP) and
resumed, a cluster-level zombie, and the leader cut off from its peers and the service by a
network partition, then healed. Each cell proves its fault struck (counted by kind) and the
cluster whole again at the end, then judges every operation on the ledger; the stall the
fault caused is measured (``stall_*_ms``)."""

from __future__ import annotations

import pytest

from chaos.cells import Cell, Fault
from chaos.cluster_cells import cluster_cells
from chaos.handlers import (
    IDEMPOTENCY_UPDATE,
    INVOICES_PAY,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
)
from chaos.runner import CellRunner
from tests.chaos import expect

#: A few minutes of CI: every pattern across the leader's death, one across a pause and one
#: across a random node's death. ``./lab chaos --profile cluster`` runs every cell.
CI_CELLS = {
    (Fault.LEADER_KILLED, IDEMPOTENCY_UPDATE.name),
    (Fault.LEADER_KILLED, TWO_PHASE_COMMIT_UPDATE.name),
    (Fault.LEADER_KILLED, KEYED_UPDATE_CONDITIONAL.name),
    (Fault.LEADER_PAUSED, IDEMPOTENCY_UPDATE.name),
    (Fault.NODE_KILLED, INVOICES_PAY.name),
    (Fault.LEADER_ISOLATED, TWO_PHASE_COMMIT_UPDATE.name),
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
    if cell.fault == Fault.LEADER_ISOLATED:
        # The cut-off leader's own attempts reached the database while it was cut off, and the
        # others took its partitions over before the partition healed.
        assert result.counts["statements_of_the_cut_off_leader"] > 0, notes
        assert result.counts["failover_ms"] > 0, notes
    if cell.fault in (Fault.LEADER_KILLED, Fault.LEADER_PAUSED, Fault.LEADER_ISOLATED):
        # The failover mattered: another node ran a call again while the first attempt, the
        # failed leader's, had reached the database too.
        assert max(result.reached_db.values()) >= 2, notes
    expect.exactly_once(result, faults=1)
