"""twoPhaseCommit when its invocation is killed through Restate while its transaction is
prepared: no handler code runs any more, so the prepared transaction (and its row lock) stays
until the janitor rolls it back. The call fails (409 killed) and its credits are not added."""

from __future__ import annotations

from chaos.lab_cells import janitor_cell
from chaos.runner import CellRunner
from tests.chaos import expect


def test_janitor_rolls_back_what_a_killed_two_phase_commit_invocation_prepared(
    runner: CellRunner,
) -> None:
    result = runner.run(janitor_cell())
    expect.not_applied(result)
    assert result.counts == {"prepared_before_janitor": 1, "janitor_rolled_back": 1}, result.notes
