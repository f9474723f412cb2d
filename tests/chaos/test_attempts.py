"""Reading the SQL trace: which attempts reached the database, and what a zombie did after it
resumed. No stack: trace lines are written by hand, as ``dbpatterns.service.sqltrace`` writes
them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos import attempts


def line(
    t: float, pid: int, attempt: str, ok: bool = True, sqlstate: str | None = None
) -> dict[str, Any]:
    return {
        "t": t,
        "pid": pid,
        "invocation": "inv_1",
        "attempt": attempt,
        "statement": "UPDATE",
        "ok": ok,
        "sqlstate": sqlstate,
    }


def test_a_statement_refused_for_what_it_said_reached_the_database_a_dead_session_did_not() -> None:
    assert attempts.reached_database(line(1, 1, "a"))
    assert attempts.reached_database(line(1, 1, "a", ok=False, sqlstate="55P03"))  # lock timeout
    assert not attempts.reached_database(line(1, 1, "a", ok=False, sqlstate="25P03"))
    assert not attempts.reached_database(line(1, 1, "a", ok=False, sqlstate="57P01"))
    assert not attempts.reached_database(line(1, 1, "a", ok=False, sqlstate="08006"))
    assert not attempts.reached_database(line(1, 1, "a", ok=False, sqlstate=None))


def test_attempts_are_counted_per_invocation() -> None:
    lines = [
        line(1, 10, "a"),
        line(2, 10, "a"),
        line(3, 11, "b", ok=False, sqlstate="25P03"),
        line(4, 12, "c"),
    ]
    grouped = attempts.attempts(lines)
    assert [a.attempt for a in grouped["inv_1"]] == ["a", "b", "c"]
    assert attempts.reaching(grouped) == {"inv_1": 2}


def test_only_the_zombies_statements_after_its_resume_count() -> None:
    lines = [
        line(1.0, 10, "zombie"),  # before the pause: not proof of anything
        line(5.0, 11, "retry"),  # the retry, another process
        line(9.0, 10, "zombie", ok=False, sqlstate="25P03"),
        line(9.1, 10, "zombie"),
    ]
    sql = attempts.zombie_sql(lines, [(10, 8.0)])
    assert (sql.reached, sql.refused, sql.sqlstates) == (1, 1, ("25P03",))
    assert attempts.zombie_sql(lines, [(10, 10.0)]).reached == 0


def test_a_line_cut_by_a_killed_process_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(
        '{"t": 1, "pid": 1, "invocation": "i", "attempt": "a", "ok": true}\n{"t": 2, "p'
    )
    trace = attempts.Trace(path)
    assert len(trace.read()) == 1
    assert trace.read(trace.offset()) == []
