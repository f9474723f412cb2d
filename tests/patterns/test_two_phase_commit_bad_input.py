"""Bad input to twoPhaseCommit/update: a prompt 4xx naming the problem, not one changed row, and
no prepared transaction left behind (in particular none for an unknown user, whose UPDATE finds
no row before anything is prepared)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbpatterns.service.boundary import MAX_CREDIT_DELTA, MAX_USER_ID_LENGTH
from dbpatterns.stack.client import Ingress
from tests.patterns.test_bad_input import INJECTION, UNKNOWN, assert_refused, body
from tests.patterns.test_two_phase_commit import assert_quiet, prepared_gids

PATH = "/twoPhaseCommit/update"

#: Not a whole number from 1 to MAX_CREDIT_DELTA.
BAD_CREDITS: list[Any] = [0, -1, -(10**6), 1.5, 1.0, True, "5", None, [5], {"n": 5}]
BAD_CREDITS += [MAX_CREDIT_DELTA + 1, 10**30, 2**63]

CASES: list[tuple[bytes, int, str]] = [
    *[(body({"userId": "A", "addCredits": n}), 400, "addCredits") for n in BAD_CREDITS],
    # missing and unknown fields, snake_case names, the wrong shape
    (body({"userId": "A"}), 400, "addCredits"),
    (body({"addCredits": 1}), 400, "userId"),
    (body({}), 400, "userId"),
    (body({"userId": "A", "addCredits": 1, "gid": "x"}), 400, "gid"),
    (body({"user_id": "A", "add_credits": 1}), 400, "userId"),
    (body([{"userId": "A", "addCredits": 1}]), 400, "UpdateCredits"),
    (body("A"), 400, "UpdateCredits"),
    (body(5), 400, "UpdateCredits"),
    # userId: 1-64 of letters, digits, _ . : - (so quotes and SQL never reach the database)
    (body({"userId": INJECTION, "addCredits": 1}), 400, "userId"),
    (body({"userId": "A' OR '1'='1", "addCredits": 1}), 400, "userId"),
    (body({"userId": "A; COMMIT PREPARED 'x'", "addCredits": 1}), 400, "userId"),
    (body({"userId": "", "addCredits": 1}), 400, "userId"),
    (body({"userId": "x" * (MAX_USER_ID_LENGTH + 1), "addCredits": 1}), 400, "userId"),
    (body({"userId": 5, "addCredits": 1}), 400, "userId"),
    (body({"userId": None, "addCredits": 1}), 400, "userId"),
    # not JSON at all
    (b"{'userId': 'A', 'addCredits': 1}", 400, "not valid JSON"),
    (b"userId=A&addCredits=1", 400, "not valid JSON"),
    (b"", 400, "empty"),
    # well-formed, but nobody by that name
    (body({"userId": UNKNOWN, "addCredits": 1}), 404, UNKNOWN),
]


@pytest.fixture
def nothing_prepared(db: psycopg.Connection[Any]) -> Iterator[None]:
    assert not prepared_gids(db)
    yield
    assert_quiet(db)


@pytest.mark.parametrize(
    ("raw_body", "status", "mentions"), CASES, ids=[f"{raw[:40]!r}-{s}" for raw, s, _ in CASES]
)
@pytest.mark.usefixtures("nothing_prepared")
def test_bad_input_is_refused_promptly_and_changes_nothing(
    ingress: Ingress,
    users_checksum: Callable[[], str],
    raw_body: bytes,
    status: int,
    mentions: str,
) -> None:
    assert_refused(ingress, users_checksum, PATH, raw_body, status, mentions)
