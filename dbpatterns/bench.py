"""What each pattern costs, measured side by side in one run against the running lab.

Every workload runs for a fixed time at a given concurrency, driven by a separate load process
(``dbpatterns.loadgen``) on loopback, over two key distributions: ``spread`` (many users) and
``hot`` (all on one user, where a virtual object queues and rows lock). Two baselines price
the rest: ``direct`` (the credit UPDATE through the service's pool code, no Restate)
and ``baseline.noop`` (Restate + SDK + HTTP/2, no database).

Per workload it reports throughput, latency percentiles, errors, the ratio to each baseline,
database transactions per operation (``pg_stat_database``), database round trips per operation
(statements, from ``pg_stat_statements``, which ``db/postgresql.conf`` preloads: every statement
is one round trip, BEGIN and COMMIT included), durable steps per operation (by construction of
the handler), and CPU seconds per operation of the service, restate-server and
Postgres (``/proc``). It checks the ledger at the end of each run: a benchmark that lost or
duplicated updates is not a result.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.stack import LabError, read_state

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
BENCH_USERS = 1000
HOT_USER = "bench-hot"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    name: str
    durable_steps: int  # journal entries the handler writes per call, besides input/output
    changes_credits: bool
    note: str


WORKLOADS = [
    Workload("direct", 0, True, "baseline 1: the credit UPDATE through the pool, no Restate"),
    Workload("baseline.noop", 0, False, "baseline 2: Restate + SDK + HTTP/2, no database"),
    Workload("simple.durableRead", 1, False, "a SELECT in one durable step"),
    Workload("keyed.update", 1, True, "UPDATE in one step, one writer per key"),
    Workload("keyed.updateConditional", 2, True, "journaled read, then version-checked UPDATE"),
    Workload("idempotency.update", 2, True, "token + UPDATE in one transaction, expiry call"),
    Workload("twoPhaseCommit.update", 2, True, "PREPARE in one step, COMMIT PREPARED in the next"),
]
DISTRIBUTIONS = ("spread", "hot")


@dataclass
class Result:
    workload: str
    distribution: str
    concurrency: int
    duration: float
    ops: int
    errors: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    db_transactions_per_op: float
    db_statements_per_op: float | None  # None: pg_stat_statements missing, or it lost entries
    durable_steps_per_op: int
    cpu_ms_per_op: dict[str, float]
    ledger_exact: bool
    error_samples: list[str] = field(default_factory=list)
    vs_direct: float | None = None
    vs_noop: float | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


# --- process CPU from /proc --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return kids


class CpuMeter:
    """CPU seconds used by the service, restate-server (every node of a cluster, together) and
    Postgres (postmaster + backends)."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]]) -> None:
        self.pids = {part: [p] if isinstance(p, int) else list(p) for part, p in pids.items()}

    def sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for part, pids in self.pids.items():
            group = [*pids, *children_of(pids[0])] if part == "postgres" else pids
            out[part] = {p: cpu_seconds(p) for p in group}
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


# --- the database side -------------------------------------------------------------------------


def prepare_users(database_url: str) -> list[str]:
    spread = [f"bench-{i:04d}" for i in range(BENCH_USERS)]
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (userid) DO NOTHING",
            [(u, "Bench User", "1 Load Lane", 1_000_000) for u in [*spread, HOT_USER]],
        )
    return spread


def credits(database_url: str, users: Iterable[str]) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT userid, credits FROM users WHERE userid = ANY(%s)", (list(users),)
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def transactions(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


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


# --- one run -----------------------------------------------------------------------------------


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "dbpatterns.loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=spec["duration"] + 120,
    )
    if proc.returncode != 0:
        raise LabError(f"the load process failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_one(
    settings: Settings,
    workload: Workload,
    users: list[str],
    distribution: str,
    concurrency: int,
    duration: float,
    meter: CpuMeter,
    statements: StatementCounter,
) -> Result:
    targets = [HOT_USER] if distribution == "hot" else users
    spec = {
        "workload": workload.name,
        "ingress_url": settings.ingress_url,
        "database_url": settings.libpq_url,
        "users": targets,
        "concurrency": concurrency,
        "duration": duration,
        "pool_size": settings.pool_size,
        "local_postgres": "postgres" in meter.pids,
    }
    balance_before = credits(settings.libpq_url, targets) if workload.changes_credits else {}
    tx_before = transactions(settings.libpq_url)
    statements_before = statements.start()
    cpu_before = meter.sample()
    out = run_load(spec)
    cpu_after = meter.sample()
    statement_count = statements.since(statements_before)
    time.sleep(1.1)  # backends report their transaction counts at most once a second
    tx_after = transactions(settings.libpq_url)
    ledger_exact = True
    if workload.changes_credits:
        after = credits(settings.libpq_url, targets)
        moved = {u: after[u] - balance_before[u] for u in targets if after[u] != balance_before[u]}
        ledger_exact = moved == {u: n for u, n in out["acked"].items() if n}
    ops = out["ok"]
    per_op = max(ops, 1)
    # `direct`: the load process ran the pool code (the service's part) and measured its own
    # backends, which end with it, most often before the meter's last look at Postgres. The
    # meter drops any that it still saw, so that none is counted twice.
    own_backends = {int(pid): s for pid, s in (out.get("backend_cpu_seconds") or {}).items()}
    for sample in (cpu_before, cpu_after):
        for pid in own_backends:
            sample.get("postgres", {}).pop(pid, None)
    used = CpuMeter.used(cpu_before, cpu_after)
    if out.get("client_cpu_seconds") is not None:
        used["service"] = out["client_cpu_seconds"]
    if own_backends:
        used["postgres"] = used.get("postgres", 0.0) + sum(own_backends.values())
    latencies = out["latencies_ms"]
    return Result(
        workload=workload.name,
        distribution=distribution,
        concurrency=concurrency,
        duration=round(out["elapsed"], 2),
        ops=ops,
        errors=out["errors"],
        throughput=round(ops / out["elapsed"], 1),
        p50_ms=round(percentile(latencies, 50), 2),
        p95_ms=round(percentile(latencies, 95), 2),
        p99_ms=round(percentile(latencies, 99), 2),
        max_ms=round(max(latencies, default=0.0), 2),
        db_transactions_per_op=round((tx_after - tx_before) / per_op, 2),
        db_statements_per_op=(
            None if statement_count is None else round(statement_count / per_op, 2)
        ),
        durable_steps_per_op=workload.durable_steps,
        cpu_ms_per_op={part: round(s * 1000 / per_op, 3) for part, s in used.items()},
        ledger_exact=ledger_exact,
        error_samples=out["error_samples"],
    )


def add_ratios(results: list[Result]) -> None:
    for r in results:
        same = {
            x.workload: x.throughput
            for x in results
            if (x.distribution, x.concurrency) == (r.distribution, r.concurrency)
        }
        if same.get("direct"):
            r.vs_direct = round(r.throughput / same["direct"], 3)
        if same.get("baseline.noop"):
            r.vs_noop = round(r.throughput / same["baseline.noop"], 3)


def lab_pids(settings: Settings) -> dict[str, list[int]]:
    """The processes of the running lab by part: ``restate`` is every restate-server of it
    (one, or each node of ``./lab up --nodes 3``)."""
    state = read_state(settings.home)
    if not state:
        raise LabError(
            f"no running lab in {settings.home}", "start it with `./lab up` in another terminal"
        )
    pids: dict[str, list[int]] = {}
    for name, part in state["parts"].items():
        if part.get("pid"):
            pids.setdefault("restate" if name.startswith("restate") else name, []).append(
                int(part["pid"])
            )
    return pids


def benchmark(
    settings: Settings,
    *,
    concurrencies: list[int],
    duration: float,
    workloads: list[Workload] = WORKLOADS,
    distributions: Iterable[str] = DISTRIBUTIONS,
    pids: Mapping[str, int | Sequence[int]] | None = None,
    say: Callable[[str], None] = print,
) -> list[Result]:
    users = prepare_users(settings.libpq_url)
    meter = CpuMeter(pids if pids is not None else lab_pids(settings))
    statements = StatementCounter(settings.libpq_url)
    if not statements.available:
        say("pg_stat_statements is not preloaded: round trips per operation are not counted")
    results: list[Result] = []
    say(header())
    for concurrency in concurrencies:
        for distribution in distributions:
            for workload in workloads:
                result = run_one(
                    settings,
                    workload,
                    users,
                    distribution,
                    concurrency,
                    duration,
                    meter,
                    statements,
                )
                results.append(result)
                say(row(result))
    add_ratios(results)
    return results


# --- reporting ---------------------------------------------------------------------------------

COLUMNS = (
    "workload", "dist", "c", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
    "tx/op", "stmts/op", "steps/op", "cpu ms/op svc", "restate", "postgres", "ledger",
)  # fmt: skip


def per_op(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def header() -> str:
    return "  ".join(f"{c:>13}" if i else f"{c:<24}" for i, c in enumerate(COLUMNS))


def cells(r: Result) -> list[str]:
    cpu = r.cpu_ms_per_op
    return [
        r.workload, r.distribution, str(r.concurrency), f"{r.throughput:.0f}",
        f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.0f}",
        str(r.errors), f"{r.db_transactions_per_op:.2f}", per_op(r.db_statements_per_op),
        str(r.durable_steps_per_op), f"{cpu.get('service', 0):.2f}", f"{cpu.get('restate', 0):.2f}",
        f"{cpu.get('postgres', 0):.2f}", "exact" if r.ledger_exact else "WRONG",
    ]  # fmt: skip


def row(r: Result) -> str:
    return "  ".join(f"{c:>13}" if i else f"{c:<24}" for i, c in enumerate(cells(r)))


def markdown(results: list[Result]) -> str:
    cols = ["workload", "dist", "c", "ops/s", "vs noop", "vs direct", "p50 ms", "p99 ms",
            "errors", "tx/op", "stmts/op", "steps/op", "cpu ms/op svc / restate / pg",
            "ledger"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in results:
        cpu = r.cpu_ms_per_op
        lines.append(
            "| " + " | ".join([
                f"`{r.workload}`", r.distribution, str(r.concurrency), f"{r.throughput:.0f}",
                f"{r.vs_noop:.2f}" if r.vs_noop is not None else "",
                f"{r.vs_direct:.2f}" if r.vs_direct is not None else "",
                f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", str(r.errors),
                f"{r.db_transactions_per_op:.2f}", per_op(r.db_statements_per_op),
                str(r.durable_steps_per_op),
                f"{cpu.get('service', 0):.2f} / {cpu.get('restate', 0):.2f} / "
                f"{cpu.get('postgres', 0):.2f}",
                "exact" if r.ledger_exact else "**wrong**",
            ]) + " |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.distribution == "spread"]
    concurrency = max(r.concurrency for r in runs)
    runs = [r for r in runs if r.concurrency == concurrency]
    # `direct` runs an order of magnitude faster than any call through Restate: drawn on the
    # same axis, it would flatten every pattern's bar. Its figure goes in the title.
    direct = [r for r in runs if r.workload == "direct"]
    runs = [r for r in runs if r.workload != "direct"] or direct
    if runs is direct:  # only `direct` was run: it is the whole chart
        direct = []
    names = [r.workload for r in runs]
    fig, left = plt.subplots(figsize=(10, 5))
    x = range(len(runs))
    ops = left.bar([i - 0.2 for i in x], [r.throughput for r in runs], width=0.4, label="ops/s")
    left.bar_label(ops, fmt="%.0f", fontsize=8)
    left.set_ylabel("throughput (ops/s)")
    right = left.twinx()
    p99 = right.bar(
        [i + 0.2 for i in x], [r.p99_ms for r in runs], width=0.4, color="tab:red", label="p99 ms"
    )
    right.bar_label(p99, fmt="%.0f", fontsize=8)
    right.set_ylabel("p99 latency (ms)")
    left.set_xticks(list(x), names, rotation=25, ha="right")
    title = f"dbpatterns: throughput and p99 per pattern (spread, concurrency {concurrency})"
    if direct:
        title += f"\nwithout Restate (direct): {direct[0].throughput:.0f} ops/s"
    left.set_title(title)
    left.set_ylim(0, 1.2 * max(r.throughput for r in runs))  # headroom for labels and legend
    right.set_ylim(0, 1.2 * max(r.p99_ms for r in runs))
    left.legend(handles=[ops, p99], loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(results: list[Result], folder: Path, meta: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.json"
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    (folder / "bench.md").write_text(markdown(results))
    plot(results, folder / "bench.png")
    return path


def summary(results: list[Result]) -> dict[str, Any]:
    """The targets of the lab, checked on these results (see the README)."""
    top = max(r.concurrency for r in results)
    spread_top = {
        r.workload: r for r in results if r.concurrency == top and r.distribution == "spread"
    }
    low = min(r.concurrency for r in results)
    checks: dict[str, Any] = {}
    floors = {"keyed.updateConditional": 0.5, "idempotency.update": 0.5,
              "twoPhaseCommit.update": 0.25}  # fmt: skip
    for name, floor in floors.items():
        r = spread_top.get(name)
        if r is not None and r.vs_noop is not None:
            checks[f"{name} >= {floor:.0%} of noop at c={top}"] = {
                "ratio": r.vs_noop, "met": r.vs_noop >= floor,
            }  # fmt: skip
    tails = [r for r in results if r.concurrency == low and r.distribution == "spread" and r.ops]
    checks[f"p99 <= 4x p50 at c={low}"] = {
        r.workload: {
            "ratio": round(r.p99_ms / max(r.p50_ms, 0.001), 2),
            "met": r.p99_ms <= 4 * r.p50_ms,
        }
        for r in tails
    }
    restate_runs = [r for r in results if r.workload != "direct" and r.ops]
    checks["service cpu/op < restate cpu/op"] = {
        f"{r.workload}/{r.distribution}/c{r.concurrency}": r.cpu_ms_per_op.get("service", 0)
        < r.cpu_ms_per_op.get("restate", 0)
        for r in restate_runs
    }
    checks["all ledgers exact"] = all(r.ledger_exact for r in results)
    checks["median noop ops/s"] = statistics.median(
        [r.throughput for r in results if r.workload == "baseline.noop"] or [0]
    )
    return checks
