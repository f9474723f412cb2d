"""Assertions on a cell's result: counts, compared as a whole so a failure shows them all."""

from __future__ import annotations

import json

from chaos.scenarios import CellResult, Fault

COUNTS = (
    "operations",
    "acknowledged",
    "failed",
    "unknown",
    "duplicates",
    "lost_updates",
    "unexplained_users",
    "prepared_transactions_left",
    "invocations_not_completed",
    "idle_in_transaction",
)


def counts(result: CellResult) -> dict[str, int]:
    row = result.as_dict()
    return {name: row[name] for name in COUNTS}


def injected(result: CellResult) -> int:
    """How many faults of the cell's own kind struck (a kill cell counts kills, ...)."""
    f = result.faults
    return {
        Fault.KILL: f.service_killed,
        Fault.ZOMBIE: min(f.service_paused, f.zombies_resumed),
        Fault.ZOMBIE_AFTER_TOKEN_EXPIRY: min(f.service_paused, f.zombies_resumed),
        Fault.RESTATE_RESTART: f.restate_killed,
        Fault.POSTGRES_RESTART: f.postgres_restarted,
        Fault.TERMINATE_CONNECTIONS: f.connections_terminated,
        Fault.INVOCATION_KILLED: f.invocations_killed,
        Fault.ZOMBIE_BETWEEN_COMMIT_ATTEMPTS: min(
            f.service_paused, f.zombies_resumed, f.service_killed
        ),
        Fault.KILL_STORM: f.service_killed,
        Fault.MIXED_STORM: f.total(),
    }[result.cell.fault]


def _detail(result: CellResult) -> str:
    return json.dumps(result.as_dict(), indent=1)


def _expected_counts(operations: int, duplicates: int) -> dict[str, int]:
    return {
        "operations": operations,
        "acknowledged": operations,
        "failed": 0,
        "unknown": 0,
        "duplicates": duplicates,
        "lost_updates": 0,
        "unexplained_users": 0,
        "prepared_transactions_left": 0,
        "invocations_not_completed": 0,
        "idle_in_transaction": 0,
    }


def exactly_once(result: CellResult, *, faults: int | None = 1) -> None:
    """Every operation acknowledged and applied once, nothing left behind, and the fault struck
    (exactly ``faults`` times, or at least once when None)."""
    operations = result.cell.operations
    assert counts(result) == _expected_counts(operations, 0), _detail(result)
    if faults is None:
        assert injected(result) >= 1, _detail(result)
    else:
        assert injected(result) == faults, _detail(result)
    assert result.problems == [], _detail(result)


def duplicated(result: CellResult, *, faults: int = 1) -> None:
    """A negative control: every operation acknowledged once and applied twice."""
    operations = result.cell.operations
    assert counts(result) == _expected_counts(operations, operations), _detail(result)
    assert injected(result) == faults, _detail(result)
    assert result.problems == [], _detail(result)


def not_applied(result: CellResult) -> None:
    """Every operation failed, none of its credits are there, nothing left behind."""
    operations = result.cell.operations
    wanted = _expected_counts(operations, 0) | {"acknowledged": 0, "failed": operations}
    assert counts(result) == wanted, _detail(result)
    assert injected(result) == operations, _detail(result)
    assert result.problems == [], _detail(result)
