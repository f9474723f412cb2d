"""The judge holds every operation to its own answer: acknowledged means once, failed means
never, killed means at most once, and no answer is never a pass; one row per operation."""

from __future__ import annotations

import pytest

from dbpatterns.testing import Operation, Outcome, judge
from dbpatterns.testing.postgres import parse_log


def op(subject: str, outcome: Outcome) -> Operation:
    return Operation("svc/handler", {}, f"key-{subject}", subject, outcome)


@pytest.mark.parametrize(
    ("outcome", "applied", "problem"),
    [
        (Outcome.ACKNOWLEDGED, 1, None),
        (Outcome.ACKNOWLEDGED, 0, "lost update"),
        (Outcome.ACKNOWLEDGED, 2, "duplicate"),
        (Outcome.FAILED, 0, None),
        (Outcome.FAILED, 1, "applied though failed"),
        (Outcome.KILLED, 0, None),
        (Outcome.KILLED, 1, None),
        (Outcome.KILLED, 2, "duplicate"),
        (Outcome.UNKNOWN, 1, "no definite answer"),
    ],
)
def test_each_operation_is_judged_by_its_own_answer_and_count(
    outcome: Outcome, applied: int, problem: str | None
) -> None:
    verdict = judge([op("a", outcome)], {"a": applied})
    if problem is None:
        assert verdict.problems == []
    else:
        [found] = verdict.problems
        assert found.startswith(problem)


def test_a_duplicate_and_a_lost_update_do_not_cancel_out() -> None:
    verdict = judge(
        [op("a", Outcome.ACKNOWLEDGED), op("b", Outcome.ACKNOWLEDGED)], {"a": 2, "b": 0}
    )
    counts = verdict.counts()
    assert (counts["duplicate"], counts["lost update"], counts["acknowledged"]) == (1, 1, 2)


def test_a_subject_missing_from_the_rows_was_applied_zero_times() -> None:
    assert judge([op("a", Outcome.ACKNOWLEDGED)], {}).problems[0].startswith("lost update")


def test_two_operations_on_one_row_are_refused() -> None:
    with pytest.raises(ValueError, match="row of its own"):
        judge([op("a", Outcome.ACKNOWLEDGED), op("a", Outcome.FAILED)], {"a": 1})


def test_postgres_csv_log_lines_read_with_their_time_and_application_name() -> None:
    line = (
        '2026-12-07 23:10:01.123 UTC,"postgres","app",4242,"127.0.0.1:5555",6575,3,"INSERT",'
        '2026-12-07 23:10:00 UTC,3/4,0,LOG,00000,"execute <unnamed>: INSERT INTO t VALUES ($1)",'
        ',,,,,,,,"dbpatterns-kit-2","client backend",,0\n'
        "2026-12-07 23:10:01.124 UTC,cut off mid-write"
    )
    [statement] = parse_log(line)
    assert statement.application_name == "dbpatterns-kit-2"
    assert statement.backend_pid == 4242
    assert statement.message.startswith("execute <unnamed>: INSERT")
    assert statement.at == pytest.approx(1796685001.123)
