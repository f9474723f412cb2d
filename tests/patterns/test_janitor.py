"""The janitor rolls back prepared transactions whose invocation has ended, and only those."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import string
import subprocess
import sys
import urllib.error
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.exactly_once.gids import GID_PREFIX, gid_for
from dbpatterns.service import failpoints, janitor
from dbpatterns.stack import free_port, settings_env
from dbpatterns.stack.client import Admin, Ingress
from tests.failpoint_checks import assert_fired
from tests.patterns.test_two_phase_commit import (
    credits_of,
    prepared_gids,
    prepared_gids_of,
    update,
    wait_for,
)

NOW = timedelta(0)  # no grace period: the tests decide what is old


def gid_of_a_call_of(invocation: str) -> str:
    """The gid a call of ``invocation`` would prepare under (``<prefix><invocation id>:<16 hex
    digits>``), as the janitor parses it."""
    return gid_for(f"{invocation}:{secrets.token_hex(8)}")


def malformed_invocation_id() -> str:
    """Looks like an invocation id, but Restate refuses it (its ids encode more than that)."""
    return "inv_1" + "".join(secrets.choice(string.ascii_letters) for _ in range(33))


@pytest.fixture
def forgotten_invocation(
    ingress: Ingress, admin: Admin, new_user: Callable[..., str]
) -> Callable[[], str]:
    """The id of an invocation that completed and that Restate no longer knows (purged, as it
    is once its completion retention, 1 day by default, has passed)."""

    def make() -> str:
        done = update(ingress, new_user(credits=0), 1)
        assert done.status_code == 200, done.text
        invocation = done.headers["x-restate-id"]
        purge = admin.http.patch(f"/invocations/{invocation}/purge")
        assert purge.status_code in (200, 202), purge.text
        wait_for(
            lambda: not admin.query(f"SELECT id FROM sys_invocation WHERE id = '{invocation}'"),  # noqa: S608
            10,
            "Restate to forget the invocation",
        )
        return invocation

    return make


@pytest.fixture
def orphan(database_url: str) -> Iterator[Callable[[str, str], str]]:
    """Prepares a transaction by hand, as a dead service would leave it: ``orphan(gid, user)``
    adds 1 credit to ``user`` and PREPAREs as ``gid``. Whatever the test leaves is rolled back."""
    made: list[str] = []

    def make(gid: str, user: str) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("UPDATE users SET credits = credits + 1 WHERE userid = %s", (user,))
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        made.append(gid)
        return gid

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for gid in made:
            with contextlib.suppress(psycopg.errors.UndefinedObject):
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def verdict_for(verdicts: list[janitor.Verdict], gid: str) -> janitor.Verdict:
    found = [v for v in verdicts if v.gid == gid]
    assert len(found) == 1, verdicts
    return found[0]


def row_is_unlocked(db: psycopg.Connection[Any], user: str) -> bool:
    """An UPDATE of the row goes through at once (a prepared transaction would hold it)."""
    try:
        with db.transaction():
            db.execute("SET LOCAL lock_timeout = '200ms'")
            db.execute("UPDATE users SET name = name WHERE userid = %s", (user,))
    except psycopg.errors.LockNotAvailable:
        return False
    return True


def test_an_orphan_of_a_killed_invocation_is_rolled_back(
    settings: Settings,
    ingress: Ingress,
    admin: Admin,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    """Killed between PREPARE and the journal entry: no handler code runs any more, the
    prepared transaction holds the row; the janitor rolls it back."""
    user = new_user(credits=100)
    failpoint("twoPhaseCommit.update.after-prepare", "1*sleep(20000)")
    invocation = update(ingress, user, 5, send=True).json()["invocationId"]
    wait_for(lambda: bool(prepared_gids_of(db, invocation)), 10, "the transaction to prepare")
    (gid,) = prepared_gids_of(db, invocation)
    assert_fired(failpoints_file, "twoPhaseCommit.update.after-prepare")
    kill = admin.http.patch(f"/invocations/{invocation}/kill")
    assert kill.status_code in (200, 202), kill.text
    wait_for(
        lambda: (
            not admin.query(
                f"SELECT id FROM sys_invocation WHERE id = '{invocation}' AND status != 'completed'"  # noqa: S608
            )
        ),
        10,
        "the invocation to end",
    )
    assert gid in prepared_gids(db), "the kill left no orphan: the test proves nothing"
    assert not row_is_unlocked(db, user)

    verdict = verdict_for(janitor.sweep(settings, grace=NOW), gid)

    assert verdict.action == "rolled back"
    assert verdict.status in (None, "completed")
    assert gid not in prepared_gids(db)
    assert row_is_unlocked(db, user)
    assert credits_of(db, user) == 100


def test_a_prepared_transaction_of_a_running_invocation_is_left_alone(
    settings: Settings,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    failpoint: Callable[[str, str], None],
    failpoints_file: Path,
) -> None:
    user = new_user(credits=100)
    failpoint("twoPhaseCommit.update.before-commit", "1*sleep(4000)")
    invocation = update(ingress, user, 5, send=True).json()["invocationId"]
    wait_for(lambda: bool(prepared_gids_of(db, invocation)), 10, "the transaction to prepare")
    (gid,) = prepared_gids_of(db, invocation)
    wait_for(
        lambda: failpoints.spent(failpoints_file, "twoPhaseCommit.update.before-commit"),
        10,
        "the commit step to reach its failpoint",
    )
    assert_fired(failpoints_file, "twoPhaseCommit.update.before-commit")

    verdict = verdict_for(janitor.sweep(settings, grace=NOW), gid)

    assert verdict.action == "left: invocation in flight"
    assert verdict.status not in (None, "completed")
    assert gid in prepared_gids(db)
    outcome = ingress.http.get(f"/restate/invocation/{invocation}/attach")
    assert outcome.status_code == 200, outcome.text
    assert credits_of(db, user) == 105
    assert gid not in prepared_gids(db)


@pytest.mark.parametrize(
    "gid_of",
    [gid_of_a_call_of, lambda invocation: GID_PREFIX + invocation],
    ids=["named after a call", "named after the invocation, as earlier versions did"],
)
def test_an_orphan_of_a_completed_invocation_is_rolled_back(
    gid_of: Callable[[str], str],
    settings: Settings,
    ingress: Ingress,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
) -> None:
    """Restate keeps a completed invocation for a day (its completion retention). A gid of the
    earlier form, the prefix and the invocation id alone, is still finished."""
    done = update(ingress, new_user(credits=0), 1)
    assert done.status_code == 200, done.text
    user = new_user(credits=100)
    gid = orphan(gid_of(done.headers["x-restate-id"]), user)

    verdict = verdict_for(janitor.sweep(settings, grace=NOW), gid)

    assert (verdict.status, verdict.action) == ("completed", "rolled back")
    assert verdict.invocation == done.headers["x-restate-id"]
    assert gid not in prepared_gids(db)
    assert credits_of(db, user) == 100


def test_an_orphan_unknown_to_restate_waits_for_the_grace_period_and_a_dry_run_changes_nothing(
    settings: Settings,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
    forgotten_invocation: Callable[[], str],
) -> None:
    user = new_user(credits=100)
    gid = orphan(gid_of_a_call_of(forgotten_invocation()), user)

    young = verdict_for(janitor.sweep(settings, grace=timedelta(hours=1)), gid)
    dry = verdict_for(janitor.sweep(settings, grace=NOW, dry_run=True), gid)
    assert (young.action, dry.action) == ("left: younger than the grace period", "would roll back")
    assert gid in prepared_gids(db)

    assert verdict_for(janitor.sweep(settings, grace=NOW), gid).action == "rolled back"
    assert gid not in prepared_gids(db)
    assert credits_of(db, user) == 100


def test_nothing_is_rolled_back_when_restate_cannot_be_asked(
    settings: Settings,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
    forgotten_invocation: Callable[[], str],
) -> None:
    gid = orphan(gid_of_a_call_of(forgotten_invocation()), new_user())
    unreachable = settings.model_copy(
        update={"restate_admin_url": f"http://127.0.0.1:{free_port()}"}
    )
    with pytest.raises(urllib.error.URLError):  # the stdlib client's "connection refused"
        janitor.sweep(unreachable, grace=NOW)
    assert gid in prepared_gids(db)


def test_prepared_transactions_of_others_are_not_touched(
    settings: Settings,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
) -> None:
    """Another application's gid, and ours with an id Restate refuses: both left alone."""
    theirs = orphan(f"someone-else:{secrets.token_hex(8)}", new_user())
    malformed = orphan(gid_of_a_call_of(malformed_invocation_id()), new_user())

    verdicts = janitor.sweep(settings, grace=NOW)

    assert theirs not in [v.gid for v in verdicts]
    assert verdict_for(verdicts, malformed).action == "left: not an invocation id"
    left = db.execute(
        "SELECT count(*) FROM pg_prepared_xacts WHERE gid IN (%s, %s)", (theirs, malformed)
    ).fetchone()
    assert left == (2,)


def test_the_periodic_janitor_rolls_back_an_orphan(
    settings: Settings,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
    forgotten_invocation: Callable[[], str],
) -> None:
    """The loop the service runs in the background (``DBPATTERNS_JANITOR_INTERVAL``)."""
    gid = orphan(gid_of_a_call_of(forgotten_invocation()), new_user())

    async def run_for_a_while() -> None:
        task = asyncio.create_task(
            janitor.run_periodically(settings, timedelta(milliseconds=100), grace=NOW)
        )
        try:
            await asyncio.to_thread(wait_for, lambda: gid not in prepared_gids(db), 10, "sweep")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run_for_a_while())
    assert gid not in prepared_gids(db)


def test_the_janitor_command_reports_then_rolls_back(
    settings: Settings,
    db: psycopg.Connection[Any],
    new_user: Callable[..., str],
    orphan: Callable[[str, str], str],
    forgotten_invocation: Callable[[], str],
) -> None:
    gid = orphan(gid_of_a_call_of(forgotten_invocation()), new_user())
    env = {**os.environ, **settings_env(settings)}

    def janitor_command(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dbpatterns.cli", "janitor", "--once", "--grace", "0", *args],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"{gid}  " in janitor_command("--dry-run")
    assert "would roll back" in janitor_command("--dry-run")
    assert gid in prepared_gids(db)
    out = janitor_command()
    assert any(gid in line and "rolled back" in line for line in out.splitlines()), out
    assert gid not in prepared_gids(db)
