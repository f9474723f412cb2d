"""One row of the benchmark: one workload at one key distribution and concurrency.

``bench`` measures it, ``bench_report`` writes it (the live table, the Markdown, ``bench.json``,
the plot); each imports it from here, so neither imports the other's type. ``bench_compare`` and
``costs_report`` read the same fields back from ``bench.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchRow:
    workload: str
    distribution: str
    concurrency: int
    load: str  # the load generator: wrk or python
    duration: float
    ops: int
    errors: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    db_write_transactions_per_op: float
    db_statements_per_op: float | None  # None: pg_stat_statements missing, or it lost entries
    durable_steps_per_op: float | None  # None: no Restate (direct)
    # service, restate, postgres, load, and proxy under ``--rtt-ms``; ``direct``'s load process
    # is its service (no load entry)
    cpu_ms_per_op: dict[str, float]
    ledger_exact: bool
    in_flight_at_stop: int = 0  # calls left unanswered when the load stopped
    error_samples: list[str] = field(default_factory=list)
    vs_direct: float | None = None
    vs_noop: float | None = None
    # ``--rtt-ms`` only: round trips per operation on each delayed link, counted by the proxy
    # (``postgres``: the service's to Postgres; ``restate``: restate-server's to the service)
    round_trips_per_op: dict[str, float] | None = None
