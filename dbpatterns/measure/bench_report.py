"""The benchmark's results as a live table, Markdown (the README's table is generated from
it), JSON and a plot. A run behind the delay proxy (``--rtt-ms``) has three columns more: the
round trips per operation to Postgres and to restate-server, and the proxy's CPU."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dbpatterns.measure import tables
from dbpatterns.measure.bench_row import BenchRow

COLUMNS = (
    "workload", "dist", "c", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
    "write tx/op", "stmts/op", "steps/op", "cpu ms/op svc", "restate", "postgres", "load",
    "ledger",
)  # fmt: skip
#: Added to the columns of a run behind the delay proxy, before ``ledger``: round trips per
#: operation to Postgres and to restate-server, and the proxy's CPU ms per operation.
DELAYED_COLUMNS = ("rt pg", "rt restate", "proxy")


def per_op(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def cpu(r: BenchRow, part: str) -> str:
    return per_op(r.cpu_ms_per_op.get(part))


def ledger(r: BenchRow) -> str:
    return "exact" if r.ledger_exact else "WRONG"


def round_trips(r: BenchRow, link: str) -> str:
    return per_op(None if r.round_trips_per_op is None else r.round_trips_per_op.get(link))


def header(delayed: bool = False) -> str:
    columns = [*COLUMNS[:-1], *DELAYED_COLUMNS, COLUMNS[-1]] if delayed else list(COLUMNS)
    return "  ".join(f"{c:>11}" if i else f"{c:<24}" for i, c in enumerate(columns))


def cells(r: BenchRow) -> list[str]:
    return [
        r.workload, r.distribution, str(r.concurrency), f"{r.throughput:.0f}",
        f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.0f}",
        str(r.errors), f"{r.db_write_transactions_per_op:.2f}", per_op(r.db_statements_per_op),
        per_op(r.durable_steps_per_op), cpu(r, "service"), cpu(r, "restate"),
        cpu(r, "postgres"), cpu(r, "load"),
        *(
            (round_trips(r, "postgres"), round_trips(r, "restate"), cpu(r, "proxy"))
            if r.round_trips_per_op is not None
            else ()
        ),
        ledger(r),
    ]  # fmt: skip


def row(r: BenchRow) -> str:
    return "  ".join(f"{c:>11}" if i else f"{c:<24}" for i, c in enumerate(cells(r)))


def markdown(results: list[BenchRow]) -> str:
    """The table; a run behind the delay proxy adds round trips per operation to Postgres and
    to restate-server, and the proxy's CPU after the load's."""
    delayed = any(r.round_trips_per_op is not None for r in results)
    parts = ("service", "restate", "postgres", "load", *(("proxy",) if delayed else ()))
    cols = ["workload", "dist", "c", "ops/s", "vs noop", "vs direct", "p50 ms", "p99 ms",
            "errors", "write tx/op", "stmts/op", "steps/op",
            *(["round trips/op pg / restate"] if delayed else []),
            "cpu ms/op svc / restate / pg / load" + (" / proxy" if delayed else ""),
            "ledger"]  # fmt: skip
    rows = [
        [
            f"`{r.workload}`", r.distribution, str(r.concurrency), f"{r.throughput:.0f}",
            f"{r.vs_noop:.2f}" if r.vs_noop is not None else "",
            f"{r.vs_direct:.2f}" if r.vs_direct is not None else "",
            f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", str(r.errors),
            f"{r.db_write_transactions_per_op:.2f}", per_op(r.db_statements_per_op),
            per_op(r.durable_steps_per_op),
            *([f"{round_trips(r, 'postgres')} / {round_trips(r, 'restate')}"] if delayed else []),
            " / ".join(cpu(r, part) for part in parts),
            ledger(r).lower() if r.ledger_exact else "**wrong**",
        ]
        for r in results
    ]  # fmt: skip
    return tables.markdown(cols, rows) + "\n"


def plot(results: list[BenchRow], path: Path) -> None:
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


def write_results(results: list[BenchRow], folder: Path, meta: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.json"
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    (folder / "bench.md").write_text(markdown(results))
    plot(results, folder / "bench.png")
    return path
