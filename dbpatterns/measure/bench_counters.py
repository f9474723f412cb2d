"""What the benchmark counts per operation, and where each count comes from.

- CPU seconds of the service, restate-server (every node of a cluster, together) and Postgres
  (postmaster and backends), from ``/proc/<pid>/stat`` (read by ``dbpatterns.stack.procfs``);
  the load generator's own CPU from the kernel's accounting of the benchmark's waited-for
  children (``RUSAGE_CHILDREN``).
- Write transactions: the transaction ids Postgres handed out (``pg_current_snapshot()``'s
  xmax moves by one per transaction that wrote). Read-only transactions get none. This is
  exact at the moment it is read, unlike ``pg_stat_database``, whose counters backends flush
  lazily (an idle pooled backend may hold its counts for seconds).
- Statements, that is database round trips (``pg_stat_statements``, BEGIN and COMMIT
  included).
- Durable steps: the journal of sample calls (Restate's ``sys_journal``), commands besides the
  call's input and output: ``ctx.run`` steps, calls and sends.
"""

from __future__ import annotations

import re
import resource
import uuid
from collections.abc import Callable, Mapping, Sequence

import psycopg

from dbpatterns.stack import procfs
from dbpatterns.stack.client import Admin, Ingress

# --- process CPU -------------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """CPU seconds of every child process this process has waited for (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds used by the service, restate-server (every node of a cluster, together) and
    Postgres (postmaster + backends)."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]]) -> None:
        self.pids = {part: [p] if isinstance(p, int) else list(p) for part, p in pids.items()}

    def sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for part, pids in self.pids.items():
            group = [*pids, *procfs.children_of(pids[0])] if part == "postgres" else pids
            out[part] = {p: procfs.cpu_seconds(p) for p in group}
        return out

    @staticmethod
    def used(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        # A backend that started during the run counts from zero; one that ended is lost
        # (pooled connections live for the whole run).
        return {
            part: sum(t - before[part].get(p, 0.0) for p, t in after[part].items())
            for part in after
        }


# --- the database ------------------------------------------------------------------------------


def next_transaction_id(database_url: str) -> int:
    """The id the next writing transaction will get; reading it assigns none."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
    assert row is not None
    return int(row[0])


class StatementCounter:
    """Statements the server ran in the lab database, from ``pg_stat_statements``.

    Each 2PC call adds two entries (its PREPARE TRANSACTION and COMMIT PREPARED carry a unique
    gid), so the counts are reset before every run, and a run in which the view had to evict
    entries (``dealloc`` moved) reports no figure rather than a low one.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.available = self._enable()

    def _enable(self) -> bool:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT FROM pg_stat_statements LIMIT 1")
            except psycopg.Error:  # not preloaded (an external server), or no right to create
                return False
        return True

    def start(self) -> tuple[int, int] | None:
        if not self.available:
            return None
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        return self._read()

    def since(self, start: tuple[int, int] | None) -> int | None:
        """Statements since ``start``, not counting the read that took ``start``."""
        if start is None:
            return None
        calls, dealloc = self._read()
        return None if dealloc != start[1] else calls - start[0] - 1

    def _read(self) -> tuple[int, int]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                "        WHERE dbid = (SELECT oid FROM pg_database"
                "                      WHERE datname = current_database())),"
                "       (SELECT dealloc FROM pg_stat_statements_info)"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


# --- Restate's journal -------------------------------------------------------------------------

INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]+")
SAMPLE_CALLS = 10


class JournalError(RuntimeError):
    pass


def journal_steps(
    ingress_url: str,
    admin_url: str,
    request: Callable[[str], tuple[str, bytes]],
    users: Sequence[str],
    samples: int = SAMPLE_CALLS,
) -> float:
    """Durable steps per call, read from the journals of ``samples`` calls.

    ``request(user)`` gives the path and body of one call. Each call carries an idempotency key,
    so restate-server keeps its journal after it completes; the step count of a call is its
    journal's commands other than Input and Output (``Command: Run``, ``Command: OneWayCall``,
    ...). A call whose journal is not there at all fails the count rather than counting 0.
    """
    ids = []
    with Ingress(ingress_url) as ingress:
        for i in range(samples):
            path, body = request(users[i % len(users)])
            headers = {"idempotency-key": str(uuid.uuid4())}
            if body:  # a handler without input refuses a content type
                headers["content-type"] = "application/json"
            answer = ingress.http.post(path, content=body, headers=headers)
            invocation = answer.headers.get("x-restate-id", "")
            if answer.status_code != 200 or not INVOCATION_ID.fullmatch(invocation):
                raise JournalError(
                    f"sample call {path} answered {answer.status_code}: {answer.text}"
                )
            ids.append(invocation)
    # Restate's SQL API takes no parameters; every id matched INVOCATION_ID, so holds no quote.
    listed = ", ".join(f"'{i}'" for i in ids)
    admin = Admin(admin_url)
    try:
        rows = admin.query(f"SELECT id, entry_type FROM sys_journal WHERE id IN ({listed})")  # noqa: S608
    finally:
        admin.close()
    entries: dict[str, list[str]] = {i: [] for i in ids}
    for r in rows:
        entries[str(r["id"])].append(str(r["entry_type"]))
    for invocation, types in entries.items():
        if "Command: Input" not in types or "Command: Output" not in types:
            raise JournalError(f"no complete journal for {invocation}: {types}")
    steps = sum(
        t.startswith("Command: ") and t not in ("Command: Input", "Command: Output")
        for types in entries.values()
        for t in types
    )
    return steps / len(ids)
