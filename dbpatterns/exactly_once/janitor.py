"""The janitor ``prepared_transaction`` needs: it rolls back prepared transactions no call will
finish. Run it in the service that makes them (``run_janitor``), or once (``sweep``).

Guarantee: a prepared transaction of ours (its gid starts with the prefix) whose invocation
Restate reports completed, or no longer knows (killed and completed invocations are forgotten
unless an idempotency key keeps them), is rolled back, releasing its row locks. One whose
invocation is still in flight (pending, scheduled, ready, running, backing-off, suspended,
paused) is never touched: that invocation will commit or roll it back itself. One whose
invocation Restate does not know is left alone while younger than the grace period (60 s by
default), so the janitor does not race a call at the moment it prepares; one of a completed
invocation (a zombie attempt's late prepare, a killed call's) goes at once.

Why it is needed: ``prepared_transaction`` cleans up after itself on every failure and on
cancellation, but an invocation killed through Restate runs no more code, and a zombie attempt
(paused, then resumed after Restate moved on) may prepare after the commit or the clean-up.
Their prepared transactions would hold their locks forever.

When Restate cannot be asked, nothing is rolled back: a doubt never rolls back.

Each pass also deletes the result rows older than ``results_retention`` (see
``prepared_transaction``: keep it longer than any call may take).

Assumption: one Restate cluster per database and gid prefix. An invocation of another cluster
is unknown to this one, and its prepared transaction would be rolled back once older than the
grace period: give each cluster's services a prefix of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import psycopg

from dbpatterns.exactly_once._tables import PREPARED_RESULTS
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.calls import INVOCATION_ID
from dbpatterns.exactly_once.gids import (
    GID_PREFIX,
    invocation_of,
    rollback_prepared,
    sweep_prepared_results,
)

log = logging.getLogger("dbpatterns.exactly_once.janitor")

#: Prepared transactions of invocations Restate does not know, younger than this, are left alone.
GRACE = timedelta(seconds=60)
#: The status of an id Restate refuses as malformed: no invocation of Restate's owns the gid.
INVALID = "not an invocation id"

#: ``statuses(invocation_ids)``: Restate's status of each invocation it knows (absent: unknown;
#: ``INVALID``: refused as malformed). ``RestateAdmin.statuses`` is one.
Statuses = Callable[[list[str]], Awaitable[dict[str, str]]]

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


class RestateAdmin:
    """restate-server's admin API (``POST /query`` on ``sys_invocation``), asked with the
    standard library only, on a thread: the janitor is rare and small."""

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        self.headers |= dict(headers or {})
        self.timeout = timeout

    async def statuses(self, invocation_ids: list[str]) -> dict[str, str]:
        """One query per id: prepared transactions are few, and one malformed id would fail a
        whole ``IN (...)`` list. The admin SQL API takes no bind parameters, so the id goes into
        the query as a string literal, which is safe because it matched ``INVOCATION_ID``
        (letters, digits, ``_``) first."""
        return await asyncio.to_thread(self._statuses, invocation_ids)

    def _statuses(self, invocation_ids: list[str]) -> dict[str, str]:
        statuses: dict[str, str] = {}
        for invocation_id in invocation_ids:
            if not INVOCATION_ID.fullmatch(invocation_id):
                raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
            query = f"SELECT id, status FROM sys_invocation WHERE id = '{invocation_id}'"  # noqa: S608
            try:
                rows = self._query(query)
            except urllib.error.HTTPError as exc:
                # restate-server 1.7 refuses such an id with a 500 that says so.
                if "non valid invocation id" not in exc.read().decode(errors="replace"):
                    raise
                statuses[invocation_id] = INVALID
                continue
            statuses.update({str(row["id"]): str(row["status"]) for row in rows})
        return statuses

    def _query(self, query: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.url}/query",
            data=json.dumps({"query": query}).encode(),
            headers=self.headers,
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            rows: list[dict[str, Any]] = json.loads(response.read())["rows"]
        return rows


PREPARED = """
    SELECT gid, now() - prepared FROM pg_prepared_xacts
    WHERE database = current_database() AND starts_with(gid, %s) ORDER BY prepared
"""


async def sweep(
    pg: Connection,
    statuses: Statuses,
    *,
    gid_prefix: str = GID_PREFIX,
    results_table: str = PREPARED_RESULTS,
    results_retention: timedelta | None = None,
    grace: timedelta = GRACE,
    dry_run: bool = False,
) -> list[Verdict]:
    """One pass over this database's prepared transactions whose gid starts with
    ``gid_prefix``, on ``pg`` (an autocommit connection); and, with ``results_retention``, the
    deletion of older result rows from ``results_table``.

    Raises (and rolls back nothing) when Postgres or Restate cannot be asked.
    """
    if not pg.autocommit:
        raise ValueError("the janitor needs an autocommit connection (ROLLBACK PREPARED)")
    if results_retention is not None and not dry_run:
        swept = await pg.execute(sweep_prepared_results(results_table), (results_retention,))
        if swept.rowcount:
            log.info(
                "janitor: %d prepared result(s) older than %s deleted",
                swept.rowcount,
                results_retention,
            )
    prepared = await (await pg.execute(PREPARED, (gid_prefix,))).fetchall()
    if not prepared:
        return []
    owners = {str(gid): invocation_of(str(gid), gid_prefix) for gid, _ in prepared}
    known = await statuses(sorted({i for i in owners.values() if i}))
    verdicts = []
    for gid, age in prepared:
        invocation = owners[gid]
        status = known.get(invocation) if invocation else None
        action: Action
        if invocation is None or status == INVALID:
            action = "left: not an invocation id"
        elif status is not None and status != "completed":
            action = "left: invocation in flight"
        elif status is None and age < grace:
            # Unknown to Restate: give a call that is only now preparing (or one Restate has
            # not shown yet) time. A completed one never commits again.
            action = "left: younger than the grace period"
        elif dry_run:
            action = "would roll back"
        else:
            action = "rolled back" if await _rollback(pg, gid) else "gone"
        verdict = Verdict(gid, age, invocation, status, action)
        if action == "rolled back":
            log.warning("janitor: %s", verdict)
        verdicts.append(verdict)
    return verdicts


async def _rollback(pg: Connection, gid: str) -> bool:
    try:
        await pg.execute(rollback_prepared(gid))
    except psycopg.errors.UndefinedObject:  # finished meanwhile (by its call or a janitor)
        return False
    return True


async def run_janitor(
    pool: Pool,
    statuses: Statuses,
    *,
    interval: timedelta,
    gid_prefix: str = GID_PREFIX,
    results_table: str = PREPARED_RESULTS,
    results_retention: timedelta | None = None,
    grace: timedelta = GRACE,
) -> None:
    """``sweep`` every ``interval`` until cancelled, on a connection of ``pool``; a failed pass
    is logged and tried again at the next. Start it as a task when the service starts."""
    while True:
        try:
            async with pool.connection() as pg:
                autocommit = pg.autocommit
                await pg.set_autocommit(True)
                try:
                    await sweep(
                        pg,
                        statuses,
                        gid_prefix=gid_prefix,
                        results_table=results_table,
                        results_retention=results_retention,
                        grace=grace,
                    )
                finally:
                    await pg.set_autocommit(autocommit)
        except Exception as exc:
            log.warning("janitor: pass failed, will try again in %s: %r", interval, exc)
        await asyncio.sleep(interval.total_seconds())
