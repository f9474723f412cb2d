"""``janitor``: roll back twoPhaseCommit's prepared transactions whose invocation has ended, in
a loop (or one sweep), against the running lab."""

from __future__ import annotations

import argparse

from dbpatterns.cli.command import Command
from dbpatterns.config import Settings
from dbpatterns.stack import LabError


def cmd_janitor(settings: Settings, args: argparse.Namespace) -> int:
    import time
    import urllib.error
    from datetime import timedelta

    import psycopg

    from dbpatterns.service import janitor

    grace = timedelta(seconds=args.grace)
    while True:
        try:
            verdicts = janitor.sweep(settings, grace=grace, dry_run=args.dry_run)
        except (urllib.error.URLError, OSError, psycopg.OperationalError) as exc:
            raise LabError(
                f"cannot sweep prepared transactions: {exc}",
                "is the lab up (`./lab status`)? The janitor needs Postgres and Restate's "
                f"admin API ({settings.admin_url}); it rolls back nothing it cannot check",
            ) from exc
        for verdict in verdicts:
            print(verdict, flush=True)
        if not verdicts:
            prefixes = ", ".join(janitor.PREFIXES)
            print(f"no prepared transactions of the lab's ({prefixes})", flush=True)
        if args.once:
            return 0
        try:
            time.sleep(settings.janitor_interval.total_seconds() or janitor.GRACE.total_seconds())
        except KeyboardInterrupt:
            return 0


def janitor_arguments(jn: argparse.ArgumentParser) -> None:
    jn.add_argument("--once", action="store_true", help="one sweep, then exit")
    jn.add_argument("--dry-run", action="store_true", help="say what would be rolled back, only")
    jn.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="leave prepared transactions younger than this alone (default 60)",
    )


COMMANDS = (
    Command(
        "janitor",
        "roll back twoPhaseCommit's prepared transactions whose invocation has ended",
        cmd_janitor,
        janitor_arguments,
    ),
)
