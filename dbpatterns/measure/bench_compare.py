"""Two sets of benchmark runs side by side: ``./lab compare NAME=RUN.json,... NAME=RUN.json,...``.

A change is adopted on a before/after table, and the lab is held against another implementation
of the same handlers on a side-by-side one; both come from this module, out of committed
``bench.json`` files, so every figure in such a table recomputes from the runs beneath it
(``tests/test_readme.py`` checks the README's tables against them). A side measured more than
once (runs interleaved in one sitting) shows each figure as the mean of its runs, with the
lowest and highest throughput beside it: a difference smaller than that spread is noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from dbpatterns.measure import tables


@dataclass(frozen=True)
class Side:
    """One side of the comparison: its name and the runs (``bench.json`` files) it has."""

    name: str
    runs: tuple[Path, ...]


RowKey = tuple[str, str, int]  # a bench row's workload, distribution and concurrency


def load_rows(path: Path) -> dict[RowKey, dict[str, Any]]:
    results = json.loads(path.read_text())["results"]
    return {(r["workload"], r["distribution"], r["concurrency"]): r for r in results}


@dataclass(frozen=True)
class Figures:
    """One row of one side, over its runs."""

    ops: list[float]
    p50_ms: float
    p99_ms: float
    service_ms: float | None
    restate_ms: float | None

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> Figures:
        def cpu(part: str) -> float | None:
            values = [r["cpu_ms_per_op"].get(part) for r in rows]
            present = [v for v in values if v is not None]
            return fmean(present) if len(present) == len(values) else None

        return cls(
            ops=[r["throughput"] for r in rows],
            p50_ms=fmean(r["p50_ms"] for r in rows),
            p99_ms=fmean(r["p99_ms"] for r in rows),
            service_ms=cpu("service"),
            restate_ms=cpu("restate"),
        )

    @property
    def throughput(self) -> float:
        return fmean(self.ops)

    def ops_cell(self) -> str:
        if len(self.ops) == 1:
            return f"{self.throughput:.0f}"
        return f"{self.throughput:.0f} ({min(self.ops):.0f}-{max(self.ops):.0f})"


def figures(side: Side) -> dict[RowKey, Figures]:
    """The rows every run of ``side`` has, each over all its runs."""
    per_run = [load_rows(path) for path in side.runs]
    common = [key for key in per_run[0] if all(key in run for run in per_run)]
    return {key: Figures.of([run[key] for run in per_run]) for key in common}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(before: Side, after: Side) -> str:
    """The rows both sides ran, in the order of ``before``'s first run: throughput of each side
    and their ratio (after / before), p50 and p99, and the CPU per call of the service and of
    restate-server."""
    a, b = figures(before), figures(after)
    names = f"{before.name} / {after.name}"
    cols = [
        "workload", "dist", "c", f"{before.name} ops/s", f"{after.name} ops/s",
        f"{after.name}/{before.name}", f"p50 ms {names}", f"p99 ms {names}",
        f"service CPU ms/op {names}", f"restate-server CPU ms/op {names}",
    ]  # fmt: skip
    rows = []
    for key in (key for key in a if key in b):
        x, y = a[key], b[key]
        workload, distribution, concurrency = key
        rows.append([
            f"`{workload}`", distribution, str(concurrency), x.ops_cell(), y.ops_cell(),
            f"{y.throughput / x.throughput:.2f}",
            f"{x.p50_ms:.0f} / {y.p50_ms:.0f}", f"{x.p99_ms:.0f} / {y.p99_ms:.0f}",
            f"{ms(x.service_ms)} / {ms(y.service_ms)}", f"{ms(x.restate_ms)} / {ms(y.restate_ms)}",
        ])  # fmt: skip
    return tables.markdown(cols, rows) + "\n"
