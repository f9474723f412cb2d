"""The checker on crafted outcomes: every anomaly it exists to catch, caught per operation.

No stack: a user, its operations and a reading of its row are built by hand, and the verdict
must name each operation that was not applied as its answer says.
"""

from __future__ import annotations

import pytest

from chaos.checker import Reading, judge_ledger, late_writes
from chaos.handlers import IDEMPOTENCY_UPDATE, INVOICES, INVOICES_PAY, KEYED_UPDATE_CONDITIONAL
from chaos.workload import MAX_OPS_PER_USER, User
from dbpatterns.testing.verdict import APPLIED_THOUGH_FAILED, DUPLICATE, LOST_UPDATE, Outcome

INITIAL = 1000


def user_with(outcomes: list[Outcome]) -> User:
    user = User("u1", INITIAL)
    for i, outcome in enumerate(outcomes):
        op = user.operation(IDEMPOTENCY_UPDATE)
        op.outcome = outcome
        op.invocation_id = f"inv_{i}"
    return user


def reading(user: User, applied: list[int]) -> dict[str, Reading]:
    """The row after each operation was applied ``applied[i]`` times, one write per application."""
    gain = sum(op.delta * n for op, n in zip(user.operations, applied, strict=True))
    return {user.user_id: Reading(INITIAL + gain, sum(applied))}


ACK = Outcome.ACKNOWLEDGED


def test_every_operation_applied_once_is_exact() -> None:
    user = user_with([ACK] * 5)
    ledger = judge_ledger([user], reading(user, [1] * 5))
    assert ledger.anomalies == []
    assert ledger.applications() == {1: 5}


def test_a_duplicate_and_a_lost_update_on_one_user_do_not_cancel() -> None:
    """The case a net balance hides when every operation adds the same amount: one operation
    applied twice, another not at all. Each is reported against its own operation."""
    user = user_with([ACK, ACK, ACK])
    ledger = judge_ledger([user], reading(user, [2, 0, 1]))
    assert (ledger.duplicates, ledger.lost_updates) == (1, 1)
    assert [(a.kind, a.invocation_id, a.applied) for a in ledger.anomalies] == [
        (DUPLICATE, "inv_0", 2),
        (LOST_UPDATE, "inv_1", 0),
    ]
    assert ledger.inconsistent_users == ledger.unexplained_users == 0


def test_an_operation_applied_three_times_counts_two_duplicates() -> None:
    user = user_with([ACK, ACK])
    ledger = judge_ledger([user], reading(user, [1, 3]))
    assert (ledger.duplicates, ledger.duplicated_operations) == (2, 1)
    assert [(a.kind, a.invocation_id, a.applied) for a in ledger.anomalies] == [
        (DUPLICATE, "inv_1", 3)
    ]


def test_an_operation_applied_four_times_is_caught_by_the_write_count() -> None:
    """Four applications carry into the next digit and read as "op 0 never, op 1 once": the
    version column (one per write) disagrees, and the user is reported inconsistent."""
    user = user_with([ACK, ACK])
    gain = 4 * user.operations[0].delta
    ledger = judge_ledger([user], {"u1": Reading(INITIAL + gain, 4)})
    assert ledger.inconsistent_users == 1
    assert ledger.mismatched_users


def test_a_write_that_overwrote_another_is_caught_by_the_write_count() -> None:
    """Two writes, but the balance holds one of them: an absolute write replaced the other."""
    user = user_with([ACK, ACK])
    ledger = judge_ledger([user], {"u1": Reading(INITIAL + user.operations[1].delta, 2)})
    assert ledger.inconsistent_users == 1
    assert ledger.lost_updates == 1


def test_a_failed_operation_that_was_applied_is_reported() -> None:
    user = user_with([ACK, Outcome.FAILED])
    ledger = judge_ledger([user], reading(user, [1, 1]))
    assert [a.kind for a in ledger.anomalies] == [APPLIED_THOUGH_FAILED]
    assert ledger.applied_though_failed == 1


def test_a_balance_below_its_start_or_beyond_its_digits_is_unexplained() -> None:
    user = user_with([ACK])
    assert judge_ledger([user], {"u1": Reading(INITIAL - 1, 0)}).unexplained_users == 1
    assert judge_ledger([user], {"u1": Reading(INITIAL + 4, 1)}).unexplained_users == 1
    assert judge_ledger([user], {}).unexplained_users == 1


def test_a_write_that_lands_after_the_verdict_is_found_by_the_next_reading() -> None:
    """A zombie's late write: exact at the first reading, a duplicate at the second."""
    user = user_with([ACK, ACK])
    verdict = judge_ledger([user], reading(user, [1, 1]))
    later = judge_ledger([user], reading(user, [1, 2]))
    assert verdict.anomalies == []
    assert late_writes(verdict, later) == [
        f"operation {user.operations[1].idempotency_key}: applied 1x at the verdict, 2x later"
    ]
    assert late_writes(verdict, verdict) == []


def test_each_user_holds_at_most_ten_operations_within_the_handlers_limit() -> None:
    user = User("u2", INITIAL)
    ops = [user.operation(KEYED_UPDATE_CONDITIONAL) for _ in range(MAX_OPS_PER_USER)]
    assert [op.delta for op in ops][:3] == [1, 4, 16]
    assert max(op.delta for op in ops) <= 1_000_000
    with pytest.raises(ValueError, match="at most"):
        user.operation(KEYED_UPDATE_CONDITIONAL)


def invoice_with(n: int) -> User:
    invoice = User("inv1", INITIAL, ledger=INVOICES)
    for i in range(n):
        op = invoice.operation(INVOICES_PAY)
        op.outcome = ACK
        op.invocation_id = f"inv_{i}"
    return invoice


def test_a_payment_log_that_agrees_with_the_row_is_exact() -> None:
    invoice = invoice_with(2)  # paid 1 + 4, two writes, two log rows adding 5
    ledger = judge_ledger([invoice], {"inv1": Reading(INITIAL + 5, 2, logged=(2, 5))})
    assert ledger.anomalies == []
    assert ledger.mismatched_users == []


@pytest.mark.parametrize("logged", [(1, 1), (3, 9), (2, 8)], ids=["missing", "extra", "amount"])
def test_a_write_whose_log_entry_did_not_commit_with_it_makes_the_row_inconsistent(
    logged: tuple[int, int],
) -> None:
    invoice = invoice_with(2)
    ledger = judge_ledger([invoice], {"inv1": Reading(INITIAL + 5, 2, logged=logged)})
    assert ledger.inconsistent_users == 1
    assert "the write log holds" in ledger.mismatched_users[0]


def test_an_operation_must_write_the_ledger_of_its_row() -> None:
    with pytest.raises(ValueError, match="writes invoices, not users"):
        User("u1", INITIAL).operation(INVOICES_PAY)
