"""janitor: the library's janitor (``dbpatterns.exactly_once.janitor``), run for the lab.

It rolls back the prepared transactions no call will finish (their invocation completed, was
killed, or is unknown to Restate past the grace period), and never one whose invocation is in
flight; see the library module for the full rule. Here it sweeps, on the lab's database and
Restate, the gids of each service that prepares transactions, each with its own results table:

* ``dbpatterns-2pc:`` (``twoPhaseCommit``, ``invoices.payTwoPhase``) and
  ``exactly_once_prepared_results``;
* ``shapes-2pc:`` (the shapes example) and ``shapes_prepared_results``.

Result rows are kept twice the token TTL (``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL``), as tokens are:
a committed result is read back by its commit step at once, and kept that long only to turn
away a zombie attempt that wakes after the commit.

Run it as ``dbpatterns janitor [--once] [--dry-run]``; the service also runs it every
``DBPATTERNS_JANITOR_INTERVAL`` (30 s by default, 0 turns it off).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import psycopg

from dbpatterns.config import Settings
from dbpatterns.exactly_once import janitor as library
from dbpatterns.exactly_once.gids import GID_PREFIX
from dbpatterns.exactly_once.janitor import GRACE, RestateAdmin, Verdict
from dbpatterns.exactly_once.schema import PREPARED_RESULTS
from dbpatterns.examples import shapes

__all__ = ["GRACE", "PREFIXES", "Verdict", "run_periodically", "sweep", "sweep_async"]

log = logging.getLogger("dbpatterns.service.janitor")

APPLICATION_NAME = "dbpatterns-janitor"
#: Each gid prefix the lab's services prepare under, with its results table.
PREFIXES = {GID_PREFIX: PREPARED_RESULTS, shapes.GID_PREFIX: shapes.RESULTS_TABLE}


async def sweep_async(
    settings: Settings, *, grace: timedelta = GRACE, dry_run: bool = False
) -> list[Verdict]:
    """One pass over the lab's prepared transactions, on a connection of its own.

    Raises (and rolls back nothing) when Postgres or Restate's admin API cannot be reached.
    """
    admin = RestateAdmin(settings.admin_url, timeout=10)
    verdicts: list[Verdict] = []
    async with await psycopg.AsyncConnection.connect(
        settings.libpq_url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10
    ) as pg:
        for prefix, results in PREFIXES.items():
            verdicts += await library.sweep(
                pg,
                admin.statuses,
                gid_prefix=prefix,
                results_table=results,
                results_retention=2 * settings.idempotency_token_ttl,
                grace=grace,
                dry_run=dry_run,
            )
    return verdicts


def sweep(settings: Settings, *, grace: timedelta = GRACE, dry_run: bool = False) -> list[Verdict]:
    """``sweep_async``, from code that runs no event loop (the command, the chaos harness)."""
    return asyncio.run(sweep_async(settings, grace=grace, dry_run=dry_run))


async def run_periodically(
    settings: Settings, interval: timedelta, grace: timedelta = GRACE
) -> None:
    """Sweep every ``interval`` until cancelled; a failed sweep is logged and tried again."""
    while True:
        try:
            await sweep_async(settings, grace=grace)
        except Exception as exc:
            log.warning("janitor: sweep failed, will try again in %s: %r", interval, exc)
        await asyncio.sleep(interval.total_seconds())
