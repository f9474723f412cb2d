"""The test kit proves what it says: each fault it offers strikes where it is armed (a kill
kills, a freeze makes a zombie whose SQL reaches Postgres after its release, a raise is retried,
a cancel reaches the handler's clean-up, a kill ends the invocation), each test asserting that
first; and its judge catches a user's mistake under the same faults (a negative control)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from dbpatterns.testing import Outcome, ServedApp, judge_rows
from dbpatterns.testing.processes import wait_until as poll

APPLIED = "SELECT sku, 10 - available FROM stock WHERE sku = ANY(%s)"
RESERVE = "stock/reserve"
AFTER_COMMIT = "stock.reserve.after-commit"
BEFORE_CLAIM = "stock.reserve.before-claim"
BEFORE_COMMIT = "stock.reserve.before-commit"

pytestmark = pytest.mark.slow


def stocked(db: psycopg.Connection[Any]) -> dict[str, Any]:
    """A reservation of 1 from a sku of its own, stocked with 10: one row per operation."""
    sku = f"sku-{uuid.uuid4()}"
    db.execute("INSERT INTO stock VALUES (%s, 10)", (sku,))
    return {"sku": sku, "quantity": 1}


def test_a_kill_at_a_point_ends_the_process_and_the_retry_runs_in_a_new_one(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    deaths = kit_service.deaths
    kit_service.arm(AFTER_COMMIT, "kill")
    body = stocked(kit_db)
    op = kit_service.call(RESERVE, body, subject=body["sku"])

    [struck] = kit_service.struck(AFTER_COMMIT, op.invocation_id)
    killed = next(p for p in kit_service.processes if p.child.pid == struck.pid)
    assert not killed.child.alive(), "the process the fault struck in is still alive"
    assert kit_service.deaths == deaths + 1
    assert kit_service.active.child.pid != struck.pid  # the retry ran in a new process
    assert op.outcome == Outcome.ACKNOWLEDGED
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_a_frozen_attempt_is_a_zombie_whose_sql_reaches_postgres_after_its_release(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm(BEFORE_CLAIM, "freeze")
    body = stocked(kit_db)
    op = kit_service.call(RESERVE, body, subject=body["sku"])

    [zombie] = kit_service.zombies
    assert zombie.struck.invocation_id == op.invocation_id
    assert zombie.process.child.stopped(), "the call answered, but not while the zombie was frozen"
    assert not zombie.statements_after_release()
    zombie.release()
    assert zombie.ran_sql(), "the zombie sent no SQL after its release"
    received = zombie.statements_after_release()
    assert all(s.at >= (zombie.released_at or 0) for s in received)
    assert any("exactly_once_tokens" in s.message for s in received), received
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_a_zombie_frozen_in_its_transaction_holds_the_retry_until_its_release(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm(BEFORE_COMMIT, "freeze")
    body = stocked(kit_db)
    pending = kit_service.call_in_background(RESERVE, body, subject=body["sku"])
    zombie = kit_service.wait_zombie()
    assert poll(lambda: kit_service.waiting_for_a_lock() > 0, 60), "the retry never waited"
    zombie.release()
    op = pending.result(timeout=120)

    assert zombie.ran_sql(), "the zombie sent no SQL after its release"
    assert op.invocation_id == zombie.struck.invocation_id
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_a_raise_at_a_point_is_retried_as_often_as_it_is_armed(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm(BEFORE_COMMIT, "raise", times=2)
    body = stocked(kit_db)
    op = kit_service.call(RESERVE, body, subject=body["sku"])

    assert len(kit_service.struck(BEFORE_COMMIT, op.invocation_id)) == 2
    assert op.outcome == Outcome.ACKNOWLEDGED
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_a_cancel_reaches_the_handlers_clean_up_and_the_answer_matches_the_database(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm(BEFORE_COMMIT, "hold", seconds=3)
    body = stocked(kit_db)
    pending = kit_service.call_in_background(RESERVE, body, subject=body["sku"])
    held = kit_service.wait_struck(BEFORE_COMMIT)
    kit_service.cancel(held.invocation_id)
    op = pending.result(timeout=120)
    kit_service.settle()

    assert op.invocation_id == held.invocation_id
    assert kit_service.cancellation_reached(held.invocation_id)
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_a_killed_invocation_ends_and_is_applied_at_most_once(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm(BEFORE_CLAIM, "hold", seconds=3)
    body = stocked(kit_db)
    pending = kit_service.call_in_background(RESERVE, body, subject=body["sku"])
    held = kit_service.wait_struck(BEFORE_CLAIM)
    kit_service.kill_invocation(held.invocation_id)
    op = pending.result(timeout=120)
    kit_service.settle()  # the held attempt goes on after the kill: let it end

    assert kit_service.invocation(held.invocation_id)["completion_failure"] == "[409] killed"
    assert op.outcome == Outcome.KILLED, op
    judge_rows([op], kit_db, APPLIED).assert_exactly_once()


def test_the_judge_catches_a_write_made_outside_the_library_under_a_kill(
    kit_service: ServedApp, kit_db: psycopg.Connection[Any]
) -> None:
    kit_service.arm("stock.reserveCareless.after-commit", "kill")
    body = stocked(kit_db)
    op = kit_service.call("stock/reserveCareless", body, subject=body["sku"])

    assert kit_service.struck("stock.reserveCareless.after-commit", op.invocation_id)
    verdict = judge_rows([op], kit_db, APPLIED)
    assert verdict.counts()["duplicate"] == 1, verdict.problems
    with pytest.raises(AssertionError, match="duplicate"):
        verdict.assert_exactly_once()
