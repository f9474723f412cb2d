"""janitor: rolls back prepared transactions that no invocation will ever finish.

Guarantee: a prepared transaction of ``twoPhaseCommit`` (gid ``dbpatterns-2pc:<invocation
id>``) whose invocation Restate reports completed, or no longer knows (killed and completed
invocations are forgotten unless an idempotency key keeps them), is rolled back, releasing its
row locks. One whose invocation is still in flight (pending, scheduled, ready, running,
backing-off, suspended, paused) is never touched: that invocation will commit or roll it back
itself. One whose invocation Restate does not know is left alone while younger than the grace
period (60 s by default), so the janitor does not race an invocation at the moment it prepares;
one of a completed invocation (a zombie attempt's late prepare) goes at once.

Why it is needed: ``twoPhaseCommit.update`` cleans up after itself on every failure and on
cancellation, but an invocation killed through Restate runs no more code, and a zombie attempt
(paused, then resumed after Restate moved on) may prepare again after the commit or the cleanup
(it finds nothing under the gid to adopt). Their prepared transactions would hold their row
locks forever.

When Restate cannot be asked (admin API down), nothing is rolled back: a doubt never rolls back.

Each pass also deletes the rows of ``exactly_once_prepared_results`` older than the token TTL
(``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL``): a committed result is read back by its commit step at
once, and kept that long only to turn away a zombie attempt that wakes after the commit.

Assumption: one Restate cluster per database. An invocation of another cluster is unknown to
this one, and its prepared transaction would be rolled back once older than the grace period.

Run it as ``dbpatterns janitor [--once] [--dry-run]``; the service also runs it every
``DBPATTERNS_JANITOR_INTERVAL`` (30 s by default, 0 turns it off).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import httpx
import psycopg

from dbpatterns.client import Admin
from dbpatterns.config import Settings
from dbpatterns.exactly_once.prepared import (
    GID_PREFIX,
    INVOCATION_ID,
    invocation_of,
    rollback_prepared,
    sweep_prepared_results,
)

log = logging.getLogger("dbpatterns.janitor")

APPLICATION_NAME = "dbpatterns-janitor"
#: Prepared transactions younger than this are left alone.
GRACE = timedelta(seconds=60)
#: The status of an id Restate refuses as malformed.
INVALID = "not an invocation id"

Action = Literal[
    "rolled back",
    "would roll back",
    "left: invocation in flight",
    "left: younger than the grace period",
    "left: not an invocation id",
    "gone",
]


@dataclass(frozen=True)
class Verdict:
    """What the janitor found and did for one prepared transaction."""

    gid: str
    age: timedelta
    invocation: str | None
    status: str | None  # Restate's status of the invocation; None: Restate does not know it
    action: Action

    def __str__(self) -> str:
        status = self.status or "unknown to Restate"
        return f"{self.gid}  age {self.age.total_seconds():.0f}s  {status}  -> {self.action}"


def invocation_statuses(admin: Admin, invocation_ids: list[str]) -> dict[str, str]:
    """Restate's status of each invocation it knows (absent: it does not know it; ``INVALID``:
    it refuses the id as malformed, so no invocation of Restate's can own the gid).

    One query per id: prepared transactions are few, and one malformed id would fail a whole
    ``IN (...)`` list. The admin SQL API takes no bind parameters, so the id goes into the query
    as a string literal, which is safe because it matched ``INVOCATION_ID`` (letters, digits,
    ``_``) first.
    """
    statuses: dict[str, str] = {}
    for invocation_id in invocation_ids:
        if not INVOCATION_ID.fullmatch(invocation_id):
            raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
        query = f"SELECT id, status FROM sys_invocation WHERE id = '{invocation_id}'"  # noqa: S608
        try:
            rows = admin.query(query)
        except httpx.HTTPStatusError as exc:
            if "non valid invocation id" not in exc.response.text:
                raise
            statuses[invocation_id] = INVALID
            continue
        statuses.update({row["id"]: row["status"] for row in rows})
    return statuses


def sweep(settings: Settings, *, grace: timedelta = GRACE, dry_run: bool = False) -> list[Verdict]:
    """One pass over this database's prepared transactions of ``twoPhaseCommit``.

    Raises (and rolls back nothing) when Postgres or Restate's admin API cannot be reached.
    """
    with psycopg.connect(
        settings.libpq_url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10
    ) as pg:
        if not dry_run:
            swept = pg.execute(sweep_prepared_results(), (settings.idempotency_token_ttl,))
            if swept.rowcount:
                log.info("janitor: %d prepared result(s) past the TTL deleted", swept.rowcount)
        prepared = pg.execute(
            "SELECT gid, now() - prepared FROM pg_prepared_xacts"
            " WHERE database = current_database() AND starts_with(gid, %s) ORDER BY prepared",
            (GID_PREFIX,),
        ).fetchall()
        if not prepared:
            return []
        owners = {gid: invocation_of(gid) for gid, _ in prepared}
        admin = Admin(settings.admin_url, timeout=10)
        try:
            statuses = invocation_statuses(admin, sorted({i for i in owners.values() if i}))
        finally:
            admin.close()
        verdicts = []
        for gid, age in prepared:
            invocation = owners[gid]
            status = statuses.get(invocation) if invocation else None
            action: Action
            if invocation is None or status == INVALID:
                action = "left: not an invocation id"
            elif status is not None and status != "completed":
                action = "left: invocation in flight"
            elif status is None and age < grace:
                # Unknown to Restate: give an invocation that is only now preparing (or one
                # Restate has not shown yet) time. A completed one never commits again.
                action = "left: younger than the grace period"
            elif dry_run:
                action = "would roll back"
            else:
                action = "rolled back" if _rollback_prepared(pg, gid) else "gone"
            verdict = Verdict(gid, age, invocation, status, action)
            if action == "rolled back":
                log.warning("janitor: %s", verdict)
            verdicts.append(verdict)
    return verdicts


def _rollback_prepared(pg: psycopg.Connection[tuple[object, ...]], gid: str) -> bool:
    try:
        pg.execute(rollback_prepared(gid))
    except psycopg.errors.UndefinedObject:  # finished meanwhile (by its invocation or a janitor)
        return False
    return True


async def run_periodically(
    settings: Settings, interval: timedelta, grace: timedelta = GRACE
) -> None:
    """Sweep every ``interval`` until cancelled; a failed sweep is logged and tried again."""
    while True:
        try:
            await asyncio.to_thread(sweep, settings, grace=grace)
        except Exception as exc:
            log.warning("janitor: sweep failed, will try again in %s: %r", interval, exc)
        await asyncio.sleep(interval.total_seconds())
