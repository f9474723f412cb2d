"""twoPhaseCommit: exactly once through prepared transactions, with nothing left behind.

Every test ends with the same checks of the quiet system: the balance is exact, no prepared
transaction of the pattern is left in ``pg_prepared_xacts``, and no session of the service's
pool is left in a transaction.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dbpatterns.config import Settings
from dbpatterns.exactly_once.gids import GID_PREFIX, gid_for, invocation_of, widen_xid
from dbpatterns.service import failpoints
from dbpatterns.stack import ServiceProcess
from dbpatterns.stack.client import Admin, Ingress
from tests.conftest import side_stack
from tests.failpoint_checks import assert_fired

SERVICE = "twoPhaseCommit"
POOL_SIZE = Settings().pool_size  # the session service runs with the default pool


def credits_of(db: psycopg.Connection[Any], user_id: str) -> int:
    row = db.execute("SELECT credits FROM users WHERE userid = %s", (user_id,)).fetchone()
    assert row is not None, f"user {user_id} is gone"
    return int(row[0])


def prepared_gids(db: psycopg.Connection[Any]) -> list[str]:
    rows = db.execute(
        "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", (GID_PREFIX,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def prepared_gids_of(db: psycopg.Connection[Any], invocation: str) -> list[str]:
    """The prepared transactions of ``invocation``'s calls (``<prefix><invocation id>:...``)."""
    return [gid for gid in prepared_gids(db) if gid.startswith(f"{GID_PREFIX}{invocation}:")]


def gid_of(response: httpx.Response) -> str:
    """The gid a successful call answered with: ``<prefix><call id>``, the call id naming the
    call's invocation."""
    gid = str(response.json()["transaction"])
    assert gid == gid_for(gid.removeprefix(GID_PREFIX)), gid  # a well-formed call id
    assert invocation_of(gid) == response.headers["x-restate-id"], gid
    return gid


def pool_sessions(db: psycopg.Connection[Any]) -> dict[str, int]:
    """The service's Postgres sessions by state (``idle``, ``idle in transaction``, ...)."""
    rows = db.execute(
        "SELECT state, count(*) FROM pg_stat_activity"
        " WHERE application_name = 'dbpatterns-service' GROUP BY state"
    ).fetchall()
    return {str(state): int(n) for state, n in rows}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_quiet(db: psycopg.Connection[Any], services: int = 1) -> None:
    """Nothing prepared left behind, and every pooled session idle (none in a transaction)."""
    wait_for(lambda: not prepared_gids(db), 10, "no prepared transaction left")
    wait_for(lambda: set(pool_sessions(db)) <= {"idle"}, 10, "every pool session idle")
    assert sum(pool_sessions(db).values()) <= services * POOL_SIZE


def update(ingress: Ingress, user: str, add: int, **kw: Any) -> httpx.Response:
    return ingress.call(SERVICE, "update", {"userId": user, "addCredits": add}, **kw)


def xact_status(db: psycopg.Connection[Any], xid: int) -> str | None:
    row = db.execute("SELECT pg_xact_status(%s::text::xid8)", (xid,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


def service_log_lines(service: ServiceProcess, *needles: str) -> list[str]:
    """Lines of the session service's log that contain every one of ``needles``."""
    lines = service.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if all(n in line for n in needles)]


# --- the plain path ----------------------------------------------------------------------------


def test_update_adds_the_credits_once_and_commits_its_prepared_transaction(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    response = update(ingress, user, 5)
    assert response.status_code == 200, response.text
    assert response.json() == {"committed": True, "credits": 105, "transaction": gid_of(response)}
    assert credits_of(db, user) == 105
    assert_quiet(db)


def test_the_same_idempotency_key_twice_adds_once(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    user = new_user(credits=100)
    key = f"tpc-{uuid.uuid4()}"
    first = update(ingress, user, 7, idempotency_key=key)
    second = update(ingress, user, 7, idempotency_key=key)
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert first.json() == second.json()
    assert credits_of(db, user) == 107
    assert_quiet(db)


def test_more_calls_than_the_pool_has_connections_all_succeed(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    """The TypeScript helper leaks one pooled connection per call and stops answering once the
    pool is empty; here every call gives its connection back, clean."""
    user = new_user(credits=0)
    calls = 2 * POOL_SIZE + 1
    for _ in range(calls):
        response = update(ingress, user, 1)
        assert response.status_code == 200, response.text
    assert credits_of(db, user) == calls
    assert_quiet(db)


# --- a forced retry of each step ---------------------------------------------------------------


@pytest.mark.parametrize(
    "point",
    [
        "twoPhaseCommit.update.before-prepare",
        "twoPhaseCommit.update.after-prepare",
        "twoPhaseCommit.update.before-commit",
        "twoPhaseCommit.update.after-commit",
    ],
)
def test_update_adds_once_when_a_step_fails_once_at(
    point: str,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """after-prepare: the retry finds the transaction prepared under its gid and adopts it.
    after-commit: the retry's COMMIT PREPARED fails with 42704 and finds the result row, which
    committed with the transaction. Either way the credits are added exactly once."""
    user = new_user(credits=100)
    failpoint(point, "1*error")
    response = update(ingress, user, 5)
    assert_fired(failpoints_file, point)
    assert response.status_code == 200, response.text
    assert response.json()["credits"] == 105
    assert credits_of(db, user) == 105
    assert_quiet(db)


# --- a transaction an earlier attempt prepared ---------------------------------------------------


def test_a_retry_adopts_the_transaction_an_earlier_attempt_prepared(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
    service: ServiceProcess,
) -> None:
    """The prepare step fails after its PREPARE; its retry finds that transaction under the
    gid and adopts it (no second PREPARE, no rollback): one commit, the credits added once."""
    user = new_user(credits=100)
    failpoint("twoPhaseCommit.update.after-prepare", "1*error")
    response = update(ingress, user, 5)
    assert_fired(failpoints_file, "twoPhaseCommit.update.after-prepare")
    assert response.status_code == 200, response.text
    invocation = response.headers["x-restate-id"]
    gid = gid_of(response)
    assert response.json() == {"committed": True, "credits": 105, "transaction": gid}
    assert len(service_log_lines(service, f"adopted {gid} ")) == 1
    assert len(service_log_lines(service, "committed (", invocation)) == 1
    assert len(service_log_lines(service, "rolled back", gid)) == 0
    row = db.execute("SELECT credits, version FROM users WHERE userid = %s", (user,)).fetchone()
    assert row == (105, 1)
    assert_quiet(db)


def test_a_zombie_that_wakes_after_the_retry_prepared_adopts_and_rolls_back_nothing(
    ingress: Ingress,
    db: psycopg.Connection[Any],
    database_url: str,
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
    service: ServiceProcess,
) -> None:
    """While an attempt is held at before-leftover-check, the transaction a retry of the same
    call would prepare (the credits, and the balance recorded as its result) is prepared under
    its gid, here by hand, noting its xid. The attempt wakes, adopts it and commits exactly that
    one, rolling back nothing: the call succeeds, once.

    The gid is the call's id, drawn from the invocation's deterministic random, so the test
    learns it from a first attempt: that one prepares and then fails (after-prepare); once its
    retry is held, the test rolls the first attempt's transaction back and prepares its own."""
    held = "twoPhaseCommit.update.before-leftover-check"
    first_fails = "twoPhaseCommit.update.after-prepare"
    user = new_user(credits=100)
    failpoint(first_fails, "1*error")
    failpoint(held, "2*sleep(5000)")  # the first attempt sleeps there too, harmlessly
    sent = update(ingress, user, 5, send=True)
    assert sent.status_code == 202, sent.text
    invocation = sent.json()["invocationId"]
    wait_for(lambda: failpoints.spent(failpoints_file, held), 20, "the retry to be held")
    assert_fired(failpoints_file, first_fails)
    assert_fired(failpoints_file, held)
    (gid,) = prepared_gids_of(db, invocation)
    first = db.execute(
        "SELECT transaction::text::bigint, pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        " FROM pg_prepared_xacts WHERE gid = %s",
        (gid,),
    ).fetchone()
    assert first is not None
    first_xid = widen_xid(int(first[0]), int(first[1]))
    with psycopg.connect(database_url, autocommit=True) as other_attempt:
        other_attempt.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        other_attempt.execute("BEGIN")
        row = other_attempt.execute(
            "UPDATE users SET credits = credits + 5, version = version + 1 WHERE userid = %s"
            " RETURNING pg_current_xact_id()::text",
            (user,),
        ).fetchone()
        assert row is not None
        xid = int(row[0])
        other_attempt.execute(
            "INSERT INTO exactly_once_prepared_results (gid, result) VALUES (%s, %s)",
            (gid, Jsonb({"credits": 105, "version": 1})),
        )
        other_attempt.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))

    outcome = ingress.http.get(f"/restate/invocation/{invocation}/attach")

    assert outcome.status_code == 200, outcome.text
    assert outcome.json() == {"committed": True, "credits": 105, "transaction": gid}
    assert xact_status(db, xid) == "committed"
    assert xact_status(db, first_xid) == "aborted"  # rolled back by the test, not committed
    assert len(service_log_lines(service, f"adopted {gid} (xid {xid})")) == 1
    assert service_log_lines(service, "rolled back", gid) == []
    row = db.execute("SELECT credits, version FROM users WHERE userid = %s", (user,)).fetchone()
    assert row == (105, 1)
    assert_quiet(db)


@pytest.mark.parametrize(
    ("xid", "near", "wide"),
    [
        (741, 750, 741),  # epoch 0
        (768, 768, 768),  # the snapshot's xmax can be a prepared transaction's own xid
        (769, 768, 769),  # or before it: xmax is one past the latest *completed* transaction
        (741, (3 << 32) + 750, (3 << 32) + 741),  # the current epoch
        (0xFFFF_FFF0, (3 << 32) + 5, (2 << 32) + 0xFFFF_FFF0),  # the epoch before
        (5, (2 << 32) + 0xFFFF_FFF0, (3 << 32) + 5),  # the epoch after
    ],
)
def test_a_32_bit_xid_widens_to_the_64_bit_one_within_2_to_the_31_of_a_current_xid(
    xid: int, near: int, wide: int
) -> None:
    assert widen_xid(xid, near) == wide


def test_an_adopted_xid_is_the_one_the_transaction_noted(
    database_url: str, new_user: Callable[..., str]
) -> None:
    """Against the server: pg_prepared_xacts' 32-bit xid widens to pg_current_xact_id()."""
    user = new_user()
    gid = gid_for(f"inv_1{uuid.uuid4().hex}:{uuid.uuid4().hex[:16]}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("BEGIN")
        noted = conn.execute(
            "UPDATE users SET credits = credits + 1 WHERE userid = %s"
            " RETURNING pg_current_xact_id()::text",
            (user,),
        ).fetchone()
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        try:
            row = conn.execute(
                "SELECT transaction::text::bigint,"
                " pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                " FROM pg_prepared_xacts WHERE gid = %s",
                (gid,),
            ).fetchone()
        finally:
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    assert noted is not None
    assert row is not None
    assert widen_xid(int(row[0]), int(row[1])) == int(noted[0])


# --- cancellation ------------------------------------------------------------------------------


def test_a_cancelled_invocation_rolls_back_its_prepared_transaction(
    ingress: Ingress,
    admin: Admin,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Cancelled while its transaction is prepared: the invocation rolls it back itself,
    answers 409, and the credits are not added."""
    user = new_user(credits=100)
    failpoint("twoPhaseCommit.update.after-prepare", "1*sleep(3000)")
    sent = update(ingress, user, 5, send=True)
    assert sent.status_code == 202, sent.text
    invocation = sent.json()["invocationId"]
    wait_for(lambda: bool(prepared_gids_of(db, invocation)), 10, "the transaction to prepare")
    assert_fired(failpoints_file, "twoPhaseCommit.update.after-prepare")
    cancel = admin.http.patch(f"/invocations/{invocation}/cancel")
    assert cancel.status_code in (200, 202), cancel.text
    outcome = ingress.http.get(f"/restate/invocation/{invocation}/attach")
    assert outcome.status_code == 409, outcome.text
    assert credits_of(db, user) == 100
    assert_quiet(db)


def test_unknown_user_is_404_and_leaves_nothing_prepared(
    ingress: Ingress, db: psycopg.Connection[Any], users_checksum: Callable[[], str]
) -> None:
    before = users_checksum()
    response = update(ingress, f"nobody-{uuid.uuid4().hex[:8]}", 5)
    assert response.status_code == 404, response.text
    assert "not found" in response.text
    assert users_checksum() == before
    assert_quiet(db)


# --- under load --------------------------------------------------------------------------------


@dataclass
class Load:
    acknowledged: dict[str, int]
    calls: int
    failures: list[str]


async def _hammer(url: str, users: list[str], callers: int, seconds: float) -> Load:
    load = Load({u: 0 for u in users}, 0, [])
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def caller(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < deadline:
                user, add = rnd.choice(users), rnd.randint(1, 9)
                try:
                    r = await client.post(
                        f"/{SERVICE}/update", json={"userId": user, "addCredits": add}
                    )
                except httpx.HTTPError as exc:
                    load.failures.append(repr(exc))
                    continue
                load.calls += 1
                if r.status_code == 200:
                    load.acknowledged[user] += add
                else:
                    load.failures.append(f"{r.status_code} {r.text}")

        await asyncio.gather(*(caller(i) for i in range(callers)))
    return load


@pytest.mark.slow
def test_64_concurrent_callers_for_10_seconds_leave_an_exact_ledger_and_a_clean_pool(
    ingress: Ingress, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    users = [new_user(credits=0) for _ in range(8)]
    load = asyncio.run(_hammer(ingress.url, users, callers=64, seconds=10))
    assert not load.failures, f"{len(load.failures)} failed, e.g. {load.failures[:3]}"
    assert load.calls > 64
    assert {u: credits_of(db, u) for u in users} == load.acknowledged
    assert_quiet(db)
    # The pool still serves: more calls than it has connections, one after the other.
    for _ in range(POOL_SIZE + 1):
        assert update(ingress, users[0], 1).status_code == 200
    assert credits_of(db, users[0]) == load.acknowledged[users[0]] + POOL_SIZE + 1


# --- every step replayed -----------------------------------------------------------------------


@dataclass
class EagerStack:
    ingress: Ingress
    restate_log: Path


@pytest.fixture(scope="module")
def eager_stack(settings: Settings, service: ServiceProcess) -> Iterator[EagerStack]:
    """A second restate-server with an inactivity timeout of 0 (an invocation suspends as soon
    as it waits for Restate, and replays its journal on the next attempt), and a second service
    process registered to it, on the same database. Its janitor is off: the invocations of
    the session's restate-server are unknown to this one. It is always a local process (the
    npm binary), whatever backend the session's restate-server comes from."""
    with side_stack(
        settings,
        settings.home / "eager",
        restate_env={
            "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "0s",
            "RESTATE_LOG_FILTER": "info,restate_invoker=debug",  # logs each attempt
        },
        janitor_interval=timedelta(0),
    ) as stack:
        yield EagerStack(stack.ingress, stack.restate.log_path)


def attempts_of(restate_log: Path, invocation: str) -> int:
    """How many attempts restate-server started for an invocation (its invoker's debug log)."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\dT)", restate_log.read_text(errors="replace"))
    return sum(
        "Executing invocation at deployment" in r and f"restate.invocation.id: {invocation}" in r
        for r in records
    )


def test_update_makes_progress_when_every_step_replays(
    eager_stack: EagerStack, db: psycopg.Connection[Any], new_user: Callable[..., str]
) -> None:
    """Inactivity timeout 0: the invocation suspends after each step and the next attempt
    replays the journal (one attempt per step, at least 3), yet adds exactly once."""
    user = new_user(credits=100)
    for i in range(1, 6):
        response = update(eager_stack.ingress, user, 1)
        assert response.status_code == 200, response.text
        assert response.json()["credits"] == 100 + i
        attempts = attempts_of(eager_stack.restate_log, response.headers["x-restate-id"])
        assert attempts >= 3, f"only {attempts} attempt(s): the steps did not replay"
    assert credits_of(db, user) == 105
    assert_quiet(db, services=2)
