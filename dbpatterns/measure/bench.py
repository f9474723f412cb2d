"""What each pattern costs, measured side by side in one run against the running lab.

Every workload runs for a fixed time at a given concurrency over two key distributions:
``spread`` (many users) and ``hot`` (all on one user, where a virtual object queues and rows
lock). The load comes from wrk (``dbpatterns.measure.wrkload``), a compiled load generator, or
on request from a Python load process (``dbpatterns.measure.loadgen``); either way its own CPU is
measured and reported, since it shares the cores with what it measures. Two baselines price the
rest: ``direct`` (the credit UPDATE through the service's pool code, no Restate; always the Python
load process, which then plays the service's part) and ``baseline.noop`` (Restate + SDK +
HTTP/2, no database).

Per workload it reports throughput, latency percentiles, errors, the ratio to each baseline,
and per operation: write transactions, statements (round trips), durable steps, and the CPU of
the service, restate-server, Postgres and the load generator (``dbpatterns.measure.bench_counters``
says where each count comes from). It checks the ledger after each run: a benchmark that lost
or duplicated updates is not a result.

With ``rtt_ms`` (``--rtt-ms N``) the calls cross a delay proxy on the two links a deployment
has on the network, restate-server to the service and the service to Postgres, each with a
round trip of N ms (``dbpatterns.measure.bench_network``); each row then also has the round
trips per operation on each link, as the proxy counted them, and the proxy's CPU.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.measure import bench_report, stats, wrkload
from dbpatterns.measure.bench_counters import (
    CpuMeter,
    StatementCounter,
    children_cpu_seconds,
    journal_steps,
    next_transaction_id,
)
from dbpatterns.measure.bench_network import (
    STABLE_CALLS,
    DelayedNetwork,
    delayed_network,
    round_trips_between,
    warm_up,
)
from dbpatterns.measure.bench_row import BenchRow
from dbpatterns.measure.loadgen import target
from dbpatterns.stack import LabError
from dbpatterns.stack.state import load as load_state

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
BENCH_USERS = 1000
HOT_USER = "bench-hot"
#: Calls that finish after the load stopped (wrk leaves one per connection unanswered, and on a
#: hot key they queue) are in the database and CPU counts before these are read.
SETTLE_S = 1.5

Load = Literal["wrk", "python"]


@dataclass(frozen=True)
class Workload:
    name: str
    changes_credits: bool
    note: str


WORKLOADS = [
    Workload("direct", True, "baseline 1: the credit UPDATE through the pool, no Restate"),
    Workload("baseline.noop", False, "baseline 2: Restate + SDK + HTTP/2, no database"),
    Workload("simple.read", False, "a SELECT, not journaled"),
    Workload("simple.durableRead", False, "a SELECT in one durable step"),
    Workload("keyed.update", True, "UPDATE in one step, one writer per key"),
    Workload("keyed.updateConditional", True, "journaled read, then version-checked UPDATE"),
    Workload("idempotency.update", True, "token + UPDATE in one transaction, expiry call"),
    Workload("twoPhaseCommit.update", True, "PREPARE in one step, COMMIT PREPARED in the next"),
]
DISTRIBUTIONS = ("spread", "hot")


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


def ledger_holds(moved: Mapping[str, int], acked: Mapping[str, int], pending: Mapping[str, int],
                 delta: int) -> bool:  # fmt: skip
    """Every user moved by exactly what was acknowledged, plus, for calls left in flight when
    the load stopped, once or not at all each."""
    for user in set(moved) | set(acked) | set(pending):
        extra = moved.get(user, 0) - acked.get(user, 0)
        if extra < 0 or extra % delta or extra // delta > pending.get(user, 0):
            return False
    return True


# --- one run -----------------------------------------------------------------------------------


@dataclass
class LoadOutcome:
    ops: int
    errors: int
    elapsed: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    acked: dict[str, int]
    pending: dict[str, int]
    error_samples: list[str]
    load_cpu_seconds: float
    # ``direct`` only: the load process ran the service's part, and its Postgres backends
    service_cpu_seconds: float | None = None
    backend_cpu_seconds: dict[int, float] | None = None


def python_load(spec: dict[str, Any]) -> LoadOutcome:
    cpu_before = children_cpu_seconds()
    proc = subprocess.run(
        [sys.executable, "-m", "dbpatterns.measure.loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=spec["duration"] + 120,
    )
    if proc.returncode != 0:
        raise LabError(f"the load process failed:\n{proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    latencies = out["latencies_ms"]
    return LoadOutcome(
        ops=out["ok"],
        errors=out["errors"],
        elapsed=out["elapsed"],
        p50_ms=stats.percentile(latencies, 50),
        p95_ms=stats.percentile(latencies, 95),
        p99_ms=stats.percentile(latencies, 99),
        max_ms=max(latencies, default=0.0),
        acked=out["acked"],
        pending={},  # the Python load waits for every call it started
        error_samples=out["error_samples"],
        load_cpu_seconds=children_cpu_seconds() - cpu_before,
        service_cpu_seconds=out.get("client_cpu_seconds"),
        backend_cpu_seconds={int(p): s for p, s in (out.get("backend_cpu_seconds") or {}).items()},
    )


def wrk_load(settings: Settings, workload: str, users: list[str], concurrency: int,
             duration: float) -> LoadOutcome:  # fmt: skip
    cpu_before = children_cpu_seconds()
    out = wrkload.run(workload, settings.ingress_url, users, concurrency, duration)
    return LoadOutcome(
        ops=out.ok,
        errors=out.failed + out.socket_errors,
        elapsed=out.elapsed,
        p50_ms=out.p50_ms,
        p95_ms=out.p95_ms,
        p99_ms=out.p99_ms,
        max_ms=out.max_ms,
        acked=out.acked,
        pending=out.pending,
        error_samples=out.error_samples,
        load_cpu_seconds=children_cpu_seconds() - cpu_before,
    )


def run_one(
    settings: Settings,
    workload: Workload,
    users: list[str],
    distribution: str,
    concurrency: int,
    duration: float,
    meter: CpuMeter,
    statements: StatementCounter,
    steps: float | None,
    load: Load,
    network: DelayedNetwork | None = None,
) -> BenchRow:
    targets = [HOT_USER] if distribution == "hot" else users
    python = load == "python" or workload.name == "direct"
    balance_before = credits(settings.libpq_url, targets) if workload.changes_credits else {}
    xid_before = next_transaction_id(settings.libpq_url)
    statements_before = statements.start()
    links_before = network.counts() if network else None
    cpu_before = meter.sample()
    if python:
        spec = {
            "workload": workload.name,
            "ingress_url": settings.ingress_url,
            # `direct`'s load plays the service: behind the proxy, as the service is
            "database_url": network.database_url if network else settings.libpq_url,
            "users": targets,
            "concurrency": concurrency,
            "duration": duration,
            "pool_size": settings.pool_size,
            "local_postgres": "postgres" in meter.pids,
        }
        out = python_load(spec)
    else:
        out = wrk_load(settings, workload.name, targets, concurrency, duration)
    time.sleep(SETTLE_S)
    cpu_after = meter.sample()
    round_trips = (
        round_trips_between(links_before, network.counts()) if network and links_before else None
    )
    statement_count = statements.since(statements_before)
    write_transactions = next_transaction_id(settings.libpq_url) - xid_before
    ledger_exact = True
    # Per-operation figures count every call that ran: the acknowledged ones, and those left in
    # flight when the load stopped that Restate finished (the ledger tells how many applied;
    # a call that changes nothing is taken to have run, as Restate runs a call whose caller left).
    finished_in_flight = sum(out.pending.values())
    if workload.changes_credits:
        after = credits(settings.libpq_url, targets)
        moved = {u: after[u] - balance_before[u] for u in targets if after[u] != balance_before[u]}
        ledger_exact = ledger_holds(moved, out.acked, out.pending, delta=1)
        finished_in_flight = sum(moved.values()) - sum(out.acked.values())
    per_op = max(out.ops + finished_in_flight, 1)
    # `direct`: the load process ran the pool code (the service's part) and measured its own
    # backends, which end with it, most often before the meter's last look at Postgres. The
    # meter drops any that it still saw, so that none is counted twice.
    own_backends = out.backend_cpu_seconds or {}
    for sample in (cpu_before, cpu_after):
        for pid in own_backends:
            sample.get("postgres", {}).pop(pid, None)
    used = CpuMeter.used(cpu_before, cpu_after)
    if out.service_cpu_seconds is not None:
        used["service"] = out.service_cpu_seconds
    else:
        used["load"] = out.load_cpu_seconds
    if own_backends:
        used["postgres"] = used.get("postgres", 0.0) + sum(own_backends.values())
    return BenchRow(
        workload=workload.name,
        distribution=distribution,
        concurrency=concurrency,
        load="python" if python else "wrk",
        duration=round(out.elapsed, 2),
        ops=out.ops,
        errors=out.errors,
        throughput=round(out.ops / out.elapsed, 1),
        p50_ms=round(out.p50_ms, 2),
        p95_ms=round(out.p95_ms, 2),
        p99_ms=round(out.p99_ms, 2),
        max_ms=round(out.max_ms, 2),
        db_write_transactions_per_op=round(write_transactions / per_op, 2),
        db_statements_per_op=(
            None if statement_count is None else round(statement_count / per_op, 2)
        ),
        durable_steps_per_op=steps,
        cpu_ms_per_op={part: round(s * 1000 / per_op, 3) for part, s in used.items()},
        ledger_exact=ledger_exact,
        in_flight_at_stop=sum(out.pending.values()),
        error_samples=out.error_samples,
        round_trips_per_op=(
            None
            if round_trips is None
            else {link: round(n / per_op, 2) for link, n in round_trips.items()}
        ),
    )


def measured_steps(settings: Settings, workload: Workload, users: list[str]) -> float | None:
    """Durable steps per call of ``workload``, from the journals of sample calls."""
    if workload.name == "direct":
        return None

    def request(user: str) -> tuple[str, bytes]:
        path, body, _ = target(workload.name, user, 1)
        return path, body

    return round(journal_steps(settings.ingress_url, settings.admin_url, request, users), 2)


def add_ratios(results: list[BenchRow]) -> None:
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
    state = load_state(settings.home)
    if state is None:
        raise LabError(
            f"no running lab in {settings.home}", "start it with `./lab up` in another terminal"
        )
    pids: dict[str, list[int]] = {}
    for name, pid in state.pids().items():
        pids.setdefault("restate" if name.startswith("restate") else name, []).append(pid)
    return pids


def benchmark(
    settings: Settings,
    *,
    concurrencies: list[int],
    duration: float,
    workloads: list[Workload] = WORKLOADS,
    distributions: Iterable[str] = DISTRIBUTIONS,
    pids: Mapping[str, int | Sequence[int]] | None = None,
    load: Load = "wrk",
    rtt_ms: float | None = None,
    say: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Every workload at every concurrency and distribution; with ``rtt_ms``, behind the delay
    proxy (``bench_network``), which a clean exit or a failure alike takes away again."""
    with contextlib.ExitStack() as exits:
        network = (
            None if rtt_ms is None else exits.enter_context(delayed_network(settings, rtt_ms, say))
        )
        parts = dict(pids if pids is not None else lab_pids(settings))
        if network is not None:  # its service in the lab's place, and the proxy
            parts |= network.pids()
            calls = warm_up(network, settings.ingress_url)
            say(f"warm-up: {calls} no-op calls, the last {STABLE_CALLS} over open connections")
        users = prepare_users(settings.libpq_url)
        meter = CpuMeter(parts)
        statements = StatementCounter(settings.libpq_url)
        if not statements.available:
            say("pg_stat_statements is not preloaded: statements per operation are not counted")
        steps = {w.name: measured_steps(settings, w, users) for w in workloads}
        results: list[BenchRow] = []
        say(bench_report.header(delayed=network is not None))
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
                        steps[workload.name],
                        load,
                        network,
                    )
                    results.append(result)
                    say(bench_report.row(result))
    add_ratios(results)
    return results


def summary(results: list[BenchRow]) -> dict[str, Any]:
    """The targets of the lab, checked on these results (see the README)."""
    low = min(r.concurrency for r in results)
    checks: dict[str, Any] = {}
    tails = [
        r
        for r in results
        if r.concurrency == low and r.distribution == "spread" and r.ops and r.workload != "direct"
    ]
    checks[f"p99 <= 4x p50 at c={low}"] = {
        r.workload: {
            "ratio": round(r.p99_ms / max(r.p50_ms, 0.001), 2),
            "met": r.p99_ms <= 4 * r.p50_ms,
        }
        for r in tails
    }
    checks["all ledgers exact"] = all(r.ledger_exact for r in results)
    checks["median noop ops/s"] = statistics.median(
        [r.throughput for r in results if r.workload == "baseline.noop"] or [0]
    )
    return checks
