"""Negative controls: the anomalies the patterns admit MUST show under the harness.

A cell here that shows no duplicate means the harness did not provoke the fault it claims to
test, so the exactly-once cells prove nothing either: it fails. ``simple`` has no handler that
changes credits (its ``update`` sets a name, which is harmless twice), so the non-idempotent
write under test is ``keyed.update`` (``credits = credits + n`` in a durable step).
"""

from __future__ import annotations

from chaos.cells import Cell, Fault
from chaos.handlers import ACCOUNT_DEPOSIT_UNCHECKED, KEYED_UPDATE
from chaos.lab_cells import fault_cells, restart_cells
from chaos.runner import CellRunner
from chaos.surface import control_cells
from tests.chaos import expect


def keyed_update_cell(fault: Fault, where: str) -> Cell:
    (cell,) = [
        c
        for c in fault_cells([KEYED_UPDATE]) + restart_cells()
        if c.fault == fault and c.handler == KEYED_UPDATE and c.where == where
    ]
    return cell


def test_keyed_update_is_exactly_once_when_killed_before_the_write(runner: CellRunner) -> None:
    expect.exactly_once(runner.run(keyed_update_cell(Fault.KILL, "before-write")))


def test_keyed_update_duplicates_when_killed_after_commit(runner: CellRunner) -> None:
    expect.duplicated(runner.run(keyed_update_cell(Fault.KILL, "after-commit")))


def test_keyed_update_duplicates_under_a_zombie_that_writes_after_resuming(
    faithful_cut: CellRunner,
) -> None:
    """Restate gives up on the paused attempt by its own timeouts here, as a hung process or a
    partition would make it: the control proves the faithful path produces the zombie."""
    result = faithful_cut.run(keyed_update_cell(Fault.ZOMBIE, "before-write"))
    assert result.zombie_sql is not None, result.notes
    assert result.zombie_sql.reached >= 1, result.notes
    expect.duplicated(result)


def test_keyed_update_duplicates_when_restate_server_dies_after_commit(
    runner: CellRunner,
) -> None:
    expect.duplicated(runner.run(keyed_update_cell(Fault.RESTATE_RESTART, "after-commit")))


def test_a_versioned_write_that_ignores_its_miss_answers_200_for_a_lost_update(
    runner: CellRunner,
) -> None:
    """The lost-update control, on the shapes' ledger: ``depositUnchecked`` (a user's mistake,
    kept on purpose) answers with the state it meant to write without looking at whether its
    UPDATE matched; the outside deposit lands inside its window, the write misses: the held
    operation is acknowledged and not applied."""
    (cell,) = [c for c in control_cells() if c.handler == ACCOUNT_DEPOSIT_UNCHECKED]
    result = runner.run(cell)
    assert result.counts["outside_writes_inside_the_window"] == 1, result.notes
    expect.lost(result, lost_updates=1)
    (anomaly,) = result.ledger.anomalies
    assert (anomaly.kind, anomaly.handler, anomaly.applied) == (
        "lost update",
        "shapesAccount.depositUnchecked",
        0,
    )


def test_every_failpoint_of_keyed_update_has_a_negative_or_positive_cell() -> None:
    points = {c.where for c in fault_cells([KEYED_UPDATE])}
    assert points == {"before-write", "after-commit"}, (
        "keyed.update's failpoints changed: give each new one its tests above"
    )
