"""Assertions on a cell's result: counts, compared as a whole so a failure shows them all."""

from __future__ import annotations

import json

from chaos.verdict import CellResult

COUNTS = (
    "operations",
    "acknowledged",
    "failed",
    "unknown",
    "duplicates",
    "lost_updates",
    "applied_though_failed",
    "unexplained_users",
    "inconsistent_users",
    "prepared_transactions_left",
    "invocations_not_completed",
    "idle_in_transaction",
)


def counts(result: CellResult) -> dict[str, int]:
    row = result.as_dict()
    return {name: row[name] for name in COUNTS}


def injected(result: CellResult) -> int:
    """How many faults of the cell's own kind struck (a kill cell counts kills, ...)."""
    return result.cell.injected(result.faults)


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
        "applied_though_failed": 0,
        "unexplained_users": 0,
        "inconsistent_users": 0,
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


def lost(result: CellResult, *, lost_updates: int = 1) -> None:
    """A lost-update control: every operation acknowledged, ``lost_updates`` of them not
    applied, none applied twice."""
    operations = result.cell.operations
    wanted = _expected_counts(operations, 0) | {"lost_updates": lost_updates}
    assert counts(result) == wanted, _detail(result)
    assert result.problems == [], _detail(result)


def applied_call_killed(result: CellResult, *, killed: int = 1, others: int = 1) -> None:
    """``killed`` calls killed after their transaction committed: failed, and applied exactly
    once; ``others`` calls of the cell acknowledged and applied once."""
    operations = killed + others
    wanted = _expected_counts(operations, 0) | {
        "acknowledged": others,
        "failed": killed,
        "applied_though_failed": killed,
    }
    assert counts(result) == wanted, _detail(result)
    assert injected(result) == killed, _detail(result)
    assert result.problems == [], _detail(result)


def not_applied(result: CellResult, *, faults: int | None = None) -> None:
    """Every operation failed, none of its credits are there, nothing left behind; the fault
    struck once per operation (or ``faults`` times)."""
    operations = result.cell.operations
    wanted = _expected_counts(operations, 0) | {"acknowledged": 0, "failed": operations}
    assert counts(result) == wanted, _detail(result)
    assert injected(result) == (operations if faults is None else faults), _detail(result)
    assert result.problems == [], _detail(result)


def as_answered(result: CellResult, *, failed: int | None = None) -> None:
    """Each operation as its answer says: acknowledged and applied once, or failed and applied
    not at all (``failed`` of them, if given), nothing left behind."""
    c = counts(result)
    operations = result.cell.operations
    wanted = _expected_counts(operations, 0) | {
        "acknowledged": operations - c["failed"],
        "failed": c["failed"],
    }
    assert c == wanted, _detail(result)
    if failed is not None:
        assert c["failed"] == failed, _detail(result)
    assert injected(result) >= 1, _detail(result)
    assert result.problems == [], _detail(result)


def at_most_once(result: CellResult) -> None:
    """Never twice, no acknowledged operation lost; a failed one applied once at most."""
    c = counts(result)
    assert c["duplicates"] == c["lost_updates"] == c["unknown"] == 0, _detail(result)
    assert c["applied_though_failed"] <= c["failed"], _detail(result)
    assert injected(result) >= 1, _detail(result)
    assert result.problems == [], _detail(result)
