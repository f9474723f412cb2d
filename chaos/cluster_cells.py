"""The cells of a three-node Restate cluster: one node fails with calls in flight, held before
their commit or under a steady load (provoked by ``chaos.node_faults``).
"""

from __future__ import annotations

from chaos.cells import Cell, Expect, Fault
from chaos.handlers import (
    IDEMPOTENCY_UPDATE,
    INVOICES_PAY,
    KEYED_UPDATE_CONDITIONAL,
    TWO_PHASE_COMMIT_UPDATE,
)
from chaos.points import hold_point

#: The handlers whose calls are in flight when a node of the cluster fails: one per library
#: pattern of the lab, and the example's idempotent transaction.
CLUSTER_HANDLERS = [
    IDEMPOTENCY_UPDATE,
    TWO_PHASE_COMMIT_UPDATE,
    KEYED_UPDATE_CONDITIONAL,
    INVOICES_PAY,
]
NODE_WHY = {
    Fault.LEADER_KILLED: "the leader of the calls' partition dies with the calls held before "
    "their commit: its follower takes over and invokes them again, while the attempts the dead "
    "node started still run in the service",
    Fault.NODE_KILLED: "a node dies with calls in flight through every ingress: calls that "
    "entered through it are asked again through the next node",
    Fault.LEADER_PAUSED: "the leader hangs (SIGSTOP) with the calls held: its partitions move, "
    "the calls are invoked again, and the paused node, resumed, must not act on them twice",
    Fault.LEADER_ISOLATED: "the leader is cut off from its peers and the service with the "
    "calls held: their attempts commit in the database while the others elect a new leader, "
    "which invokes them again; healed, the old leader must not act on them twice",
}


def cluster_cells(operations: int = 4) -> list[Cell]:
    """Every exactly-once pattern across the failure of one node of a three-node cluster."""
    return [
        Cell((h,), fault, hold_point(h), Expect.EXACTLY_ONCE, operations, NODE_WHY[fault])
        for fault in (
            Fault.LEADER_KILLED,
            Fault.NODE_KILLED,
            Fault.LEADER_PAUSED,
            Fault.LEADER_ISOLATED,
        )
        for h in CLUSTER_HANDLERS
    ]


#: Under load: calls per second, seconds of calls before the fault, and after it (long enough
#: for the slowest failover measured, a partition's, and the recovery after it).
LOAD_RATE = 12.0
LOAD_BEFORE_S = 6.0
LOAD_AFTER_S = 54.0
LOAD_WHY = (
    "calls arrive at a steady pace through every node's ingress while the node fails: how far "
    "the completions per second fall and how long until they are back, with every call "
    "applied once"
)


def cluster_load_cells() -> list[Cell]:
    """``idempotency.update`` under a steady load across each kind of node failure."""
    operations = round(LOAD_RATE * (LOAD_BEFORE_S + LOAD_AFTER_S))
    return [
        Cell(
            (IDEMPOTENCY_UPDATE,), fault, None, Expect.EXACTLY_ONCE, operations, LOAD_WHY, load=True
        )
        for fault in (Fault.LEADER_KILLED, Fault.LEADER_PAUSED, Fault.LEADER_ISOLATED)
    ]
