"""What produced a committed result: the code (its commit, and whether the checkout had changes
on top of it), the service's HTTP server, and the versions of restate-server, PostgreSQL and
the Python packages the service runs on. A report records it, so a figure that outlives the
code it measured says so."""

from __future__ import annotations

import subprocess
from importlib import metadata
from typing import Any

import psycopg

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.stack.processes import LabError
from dbpatterns.stack.restate import find_restate_binary

PACKAGES = ("restate-sdk", "psycopg", "granian", "hypercorn", "pydantic")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> dict[str, Any]:
    """The checkout's commit, and the files changed on top of it (none: the commit is the code)."""
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "changed_files": None if changed is None else len(changed.splitlines()),
    }


def restate_server_version(settings: Settings) -> str | None:
    try:
        binary = find_restate_binary("restate-server", "restate-server", settings.restate_bin)
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired, LabError):
        return None
    if done.returncode != 0:
        return None
    first = (done.stdout or done.stderr).strip().splitlines()[0]  # "restate-server 1.7.12"
    return first.removeprefix("restate-server").strip()


def postgres_version(database_url: str) -> str | None:
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else str(row[0])


def packages() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def provenance(settings: Settings, database_url: str | None = None) -> dict[str, Any]:
    """Everything above, for a report's metadata."""
    return {
        **commit(),
        "service_server": settings.service_server,
        "restate_server": restate_server_version(settings),
        "postgres": postgres_version(database_url or settings.libpq_url),
        "packages": packages(),
    }
