"""The janitor is the library's, for any service's gid prefix and results table: it rolls back a
prepared transaction whose invocation completed (or Restate forgot, past the grace period),
never one in flight, never another prefix's; it sweeps old result rows of its own table only;
it runs in the user's service (``run_janitor``) and asks restate-server itself
(``RestateAdmin``)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from dbpatterns.exactly_once.gids import gid_for
from dbpatterns.exactly_once.janitor import INVALID, RestateAdmin, Verdict, run_janitor, sweep
from dbpatterns.stack.client import Ingress
from tests.conftest import RestateEndpoints

PREFIX = "custom-2pc:"
RESULTS = "shapes_prepared_results"  # any table of the library's results shape will do
NOW = timedelta(0)


def new_invocation() -> str:
    return "inv_1" + "".join(secrets.choice(string.ascii_letters) for _ in range(33))


@pytest.fixture
def orphan(database_url: str) -> Iterator[Callable[[str], str]]:
    """``orphan(gid)``: a transaction prepared by hand as ``gid``, as a dead attempt leaves it.
    Whatever the test leaves is rolled back."""
    made: list[str] = []

    def make(gid: str) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_current_xact_id()")
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        made.append(gid)
        return gid

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for gid in made:
            with contextlib.suppress(psycopg.errors.UndefinedObject):
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def gid_of(invocation: str, prefix: str = PREFIX) -> str:
    return gid_for(f"{invocation}:{uuid.uuid4().hex[:16]}", prefix)


def still_prepared(db: psycopg.Connection[Any], gid: str) -> bool:
    row = db.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone()
    return row == (1,)


def run_sweep(database_url: str, statuses: dict[str, str], **kw: Any) -> list[Verdict]:
    asked: list[list[str]] = []

    async def known(invocation_ids: list[str]) -> dict[str, str]:
        asked.append(invocation_ids)
        return {i: s for i, s in statuses.items() if i in invocation_ids}

    async def run() -> list[Verdict]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
            return await sweep(pg, known, gid_prefix=PREFIX, results_table=RESULTS, **kw)

    return asyncio.run(run())


def test_a_custom_prefix_is_swept_by_its_invocations_status_and_nothing_else_is(
    database_url: str, db: psycopg.Connection[Any], orphan: Callable[[str], str]
) -> None:
    done, running, forgotten, young = (new_invocation() for _ in range(4))
    completed_gid = orphan(gid_of(done))
    in_flight_gid = orphan(gid_of(running))
    forgotten_gid = orphan(gid_of(forgotten))
    young_gid = orphan(gid_of(young))
    others = orphan(gid_of(new_invocation(), prefix="dbpatterns-2pc:"))
    statuses = {done: "completed", running: "running"}

    verdicts = run_sweep(database_url, statuses, grace=timedelta(seconds=60))
    actions = {v.gid: v.action for v in verdicts}
    assert actions[completed_gid] == "rolled back"
    assert actions[in_flight_gid] == "left: invocation in flight"
    assert actions[forgotten_gid] == "left: younger than the grace period"
    assert actions[young_gid] == "left: younger than the grace period"
    assert others not in actions
    assert not still_prepared(db, completed_gid)
    assert all(still_prepared(db, g) for g in (in_flight_gid, forgotten_gid, young_gid, others))

    later = run_sweep(database_url, statuses, grace=NOW)
    assert {v.gid: v.action for v in later}[forgotten_gid] == "rolled back"
    assert still_prepared(db, in_flight_gid)
    assert still_prepared(db, others)


def test_a_dry_run_and_a_malformed_owner_roll_back_nothing(
    database_url: str, db: psycopg.Connection[Any], orphan: Callable[[str], str]
) -> None:
    done, refused = new_invocation(), new_invocation()
    gid = orphan(gid_of(done))
    malformed = orphan(gid_of(refused))
    verdicts = run_sweep(database_url, {done: "completed", refused: INVALID}, dry_run=True)
    actions = {v.gid: v.action for v in verdicts}
    assert actions[gid] == "would roll back"
    assert actions[malformed] == "left: not an invocation id"
    assert still_prepared(db, gid)
    assert still_prepared(db, malformed)


def test_old_result_rows_of_its_own_table_are_swept(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    old, new = gid_of(new_invocation()), gid_of(new_invocation())
    table = sql.Identifier(RESULTS)
    db.execute(
        sql.SQL(
            "INSERT INTO {} (gid, result, created_at) VALUES"
            " (%s, %s, now() - interval '2 hours'), (%s, %s, now())"
        ).format(table),
        (old, Jsonb(1), new, Jsonb(2)),
    )
    run_sweep(database_url, {}, results_retention=timedelta(hours=1))
    rows = db.execute(
        sql.SQL("SELECT gid FROM {} WHERE gid = ANY(%s)").format(table), ([old, new],)
    ).fetchall()
    assert rows == [(new,)]


def test_the_periodic_janitor_in_a_users_service_rolls_back_an_orphan(
    database_url: str, db: psycopg.Connection[Any], orphan: Callable[[str], str]
) -> None:
    done = new_invocation()
    gid = orphan(gid_of(done))

    async def completed(invocation_ids: list[str]) -> dict[str, str]:
        return {i: "completed" for i in invocation_ids}

    async def run() -> None:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
            task = asyncio.create_task(
                run_janitor(
                    pool,
                    completed,
                    interval=timedelta(milliseconds=200),
                    gid_prefix=PREFIX,
                    results_table=RESULTS,
                )
            )
            for _ in range(50):
                await asyncio.sleep(0.1)
                if not await asyncio.to_thread(still_prepared, db, gid):
                    break
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert not still_prepared(db, gid)


def test_restate_is_asked_for_each_invocation_and_a_malformed_id_is_told_apart(
    restate_server: RestateEndpoints, ingress: Ingress
) -> None:
    known = ingress.call("simple", "read", "A", idempotency_key=f"janitor-{uuid.uuid4()}")
    assert known.status_code == 200, known.text
    invocation = known.headers["x-restate-id"]
    malformed = new_invocation()
    admin = RestateAdmin(restate_server.admin_url)
    statuses = asyncio.run(admin.statuses([invocation, malformed]))
    assert statuses == {invocation: "completed", malformed: INVALID}
    with pytest.raises(ValueError, match="not a Restate invocation id"):
        asyncio.run(admin.statuses(["inv_1'; DROP TABLE users; --"]))
