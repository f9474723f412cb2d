"""Bad input to simple, keyed and idempotency: a prompt 4xx that names the problem, no retry,
and not one changed row.

Each case goes through the real ingress as curl would send it. "Prompt" is the proof that
Restate did not retry: a retried (non-terminal) failure would keep the call open far longer
than ``PROMPT``. The twoPhaseCommit cases live in their own file and can reuse
``assert_refused``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dbpatterns.service.boundary import MAX_CREDIT_DELTA, MAX_USER_ID_LENGTH
from dbpatterns.stack.client import Ingress

PROMPT = 5.0  # seconds
INJECTION = "A'; DROP TABLE users; --"
UNKNOWN = "nobody-at-all"


def assert_refused(
    ingress: Ingress,
    users_checksum: Callable[[], str],
    path: str,
    raw_body: bytes,
    status: int,
    mentions: str = "",
    content_type: str | None = "application/json",
) -> None:
    """POST ``raw_body`` to ``path``: expect ``status`` promptly and an unchanged users table."""
    before = users_checksum()
    started = time.monotonic()
    headers = {"content-type": content_type} if content_type else {}
    response = ingress.http.post(path, content=raw_body, headers=headers, timeout=PROMPT)
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert mentions.lower() in response.text.lower(), response.text
    assert elapsed < PROMPT, f"took {elapsed:.1f}s"
    assert users_checksum() == before, "bad input changed the users table"


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def new_user_body(**override: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"userId": "A", "name": "N", "address": "Addr", "credits": 1}
    fields.update(override)
    return fields


# (path, raw body, status, a word the error must contain)
CASES: list[tuple[str, bytes, int, str]] = [
    # --- simple/read and simple/durableRead: the body is a user id -----------------------
    ("/simple/read", body(5), 400, "string"),
    ("/simple/read", body({"userId": "A"}), 400, "string"),
    ("/simple/read", body(None), 400, "string"),
    ("/simple/read", body(""), 400, "value"),
    ("/simple/read", body(INJECTION), 400, "pattern"),
    ("/simple/read", body("x" * (MAX_USER_ID_LENGTH + 1)), 400, "at most"),
    ("/simple/read", b"A", 400, "not valid JSON"),
    ("/simple/read", b"", 400, "empty"),
    ("/simple/read", body(UNKNOWN), 404, UNKNOWN),
    ("/simple/durableRead", body(["B"]), 400, "string"),
    ("/simple/durableRead", body(INJECTION), 400, "pattern"),
    ("/simple/durableRead", b"{", 400, "not valid JSON"),
    ("/simple/durableRead", body(UNKNOWN), 404, UNKNOWN),
    ("/simple/read", b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
    ("/simple/read", b"\xef\xbb\xbf" + body("A"), 400, "BOM"),
    ("/simple/read", '"A"'.encode("utf-16"), 400, "not UTF-8"),
    (
        "/idempotency/update",
        b'{"userId": "A", "addCredits": -5, "addCredits": 5}',
        400,
        "more than once",
    ),
    # --- simple/insert ---------------------------------------------------------------------
    ("/simple/insert", body("A"), 400, "NewUser"),
    ("/simple/insert", body({"userId": "new-1", "name": "N", "credits": 1}), 400, "address"),
    ("/simple/insert", body(new_user_body(userId="new-2", admin=True)), 400, "admin"),
    ("/simple/insert", body({**new_user_body(userId="new-3"), "user_id": "x"}), 400, "user_id"),
    ("/simple/insert", body(new_user_body(userId="new-4", credits=-1)), 400, "credits"),
    ("/simple/insert", body(new_user_body(userId="new-5", credits=1.5)), 400, "credits"),
    ("/simple/insert", body(new_user_body(userId="new-6", credits=True)), 400, "credits"),
    ("/simple/insert", body(new_user_body(userId="new-7", credits="5")), 400, "credits"),
    ("/simple/insert", body(new_user_body(userId="new-8", credits=10**30)), 400, "credits"),
    ("/simple/insert", body(new_user_body(userId=INJECTION)), 400, "userId"),
    ("/simple/insert", body(new_user_body(userId="new-9", name="")), 400, "name"),
    ("/simple/insert", body(new_user_body(userId="new-10", name="a\u0000b")), 400, "name"),
    ("/simple/insert", b"", 400, "empty"),
    # --- simple/update ---------------------------------------------------------------------
    ("/simple/update", body({"userId": "A"}), 400, "newName"),
    ("/simple/update", body({"userId": "A", "newName": "N", "credits": 5}), 400, "credits"),
    ("/simple/update", body({"userId": "A", "newName": "x" * 257}), 400, "newName"),
    ("/simple/update", body({"userId": INJECTION, "newName": "N"}), 400, "userId"),
    ("/simple/update", body({"userId": UNKNOWN, "newName": "N"}), 404, UNKNOWN),
    # --- keyed: the body is the number of credits to add -----------------------------------
    *[
        (f"/keyed/A/{handler}", raw, 400, word)
        for handler in ("update", "updateConditional")
        for raw, word in [
            (body(0), "greater than or equal to 1"),
            (body(-5), "greater than or equal to 1"),
            (body(1.5), "integer"),
            (body(1.0), "integer"),
            (body(True), "integer"),
            (body("5"), "integer"),
            (body(None), "integer"),
            (body({"credits": 5}), "integer"),
            (body(MAX_CREDIT_DELTA + 1), "less than or equal"),
            (body(10**30), "less than or equal"),
            (b"five", "not valid JSON"),
            (b"", "empty"),
        ]
    ],
    ("/keyed/nobody-at-all/update", body(5), 404, UNKNOWN),
    ("/keyed/nobody-at-all/updateConditional", body(5), 404, UNKNOWN),
    ("/keyed/A%27%3B%20DROP%20TABLE%20users%3B%20--/update", body(5), 400, "object key"),
    (f"/keyed/{'k' * (MAX_USER_ID_LENGTH + 1)}/updateConditional", body(5), 400, "object key"),
    # --- idempotency/update ----------------------------------------------------------------
    *[
        ("/idempotency/update", body({"userId": "A", "addCredits": n}), 400, "addCredits")
        for n in (0, -1, 1.5, True, "5", None, MAX_CREDIT_DELTA + 1, 10**30)
    ],
    ("/idempotency/update", body({"userId": "A"}), 400, "addCredits"),
    ("/idempotency/update", body({"userId": "A", "addCredits": 1, "token": "t"}), 400, "token"),
    ("/idempotency/update", body({"user_id": "A", "add_credits": 1}), 400, "userId"),
    ("/idempotency/update", body({"userId": INJECTION, "addCredits": 1}), 400, "userId"),
    ("/idempotency/update", body([{"userId": "A", "addCredits": 1}]), 400, "UpdateCredits"),
    ("/idempotency/update", b"{'userId': 'A'}", 400, "not valid JSON"),
    ("/idempotency/update", b"", 400, "empty"),
    ("/idempotency/update", body({"userId": UNKNOWN, "addCredits": 1}), 404, UNKNOWN),
]


@pytest.mark.parametrize(
    ("path", "raw_body", "status", "mentions"),
    CASES,
    ids=[f"{path}-{raw[:40]!r}-{status}" for path, raw, status, _ in CASES],
)
def test_bad_input_is_refused_promptly_and_changes_nothing(
    ingress: Ingress,
    users_checksum: Callable[[], str],
    path: str,
    raw_body: bytes,
    status: int,
    mentions: str,
) -> None:
    assert_refused(ingress, users_checksum, path, raw_body, status, mentions)


def test_keyed_read_refuses_a_bad_key_and_a_body(
    ingress: Ingress, users_checksum: Callable[[], str]
) -> None:
    """``keyed/<user>/read`` takes no body; the ingress refuses one before the service sees it."""
    bad_key = "/keyed/A%27%3B%20DROP%20TABLE%20users%3B%20--/read"
    assert_refused(ingress, users_checksum, bad_key, b"", 400, "object key", content_type=None)
    assert_refused(ingress, users_checksum, "/keyed/A/read", body(5), 400, "empty")


def test_bad_input_to_idempotency_update_records_no_committed_token(
    ingress: Ingress, users_checksum: Callable[[], str], db: psycopg.Connection[Any]
) -> None:
    """A 400 is refused before the call takes a token; the 404 (an unknown user) is the call's
    own answer, so its token is marked ``failed``: nothing committed, and no late attempt can."""
    since = db.execute("SELECT clock_timestamp()").fetchone()
    assert since is not None
    for raw in (body({"userId": "A", "addCredits": 0}), body({"userId": UNKNOWN, "addCredits": 1})):
        status = 404 if UNKNOWN.encode() in raw else 400
        assert_refused(ingress, users_checksum, "/idempotency/update", raw, status)
    rows = db.execute(
        "SELECT outcome, count(*) FROM user_idempotency WHERE created_at >= %s GROUP BY outcome",
        (since[0],),
    ).fetchall()
    assert rows == [("failed", 1)]


@pytest.mark.parametrize(
    "name",
    [
        "Robert'); DROP TABLE users; --",
        'O"Brien \\ 100% _under_ ;',
        "$1 $$ :name %(name)s {} ?",
        "Zoë ✓ 名前",
    ],
)
def test_sql_metacharacters_in_names_are_stored_verbatim(
    ingress: Ingress, db: psycopg.Connection[Any], name: str
) -> None:
    """Parameterised statements: text is data, whatever it contains."""
    user = f"u-{uuid.uuid4().hex[:12]}"
    inserted = ingress.call("simple", "insert", new_user_body(userId=user, name=name, address=name))
    assert inserted.status_code == 200, inserted.text
    assert inserted.json() == {"inserted": True}
    row = db.execute("SELECT name, address FROM users WHERE userid = %s", (user,)).fetchone()
    assert row == (name, name)

    renamed = ingress.call("simple", "update", {"userId": user, "newName": name + "!"})
    assert renamed.status_code == 200, renamed.text
    read = ingress.call("simple", "read", user)
    assert read.json()["name"] == name + "!"
    assert db.execute("SELECT count(*) FROM users WHERE userid IN ('A', 'B')").fetchone() == (2,)
