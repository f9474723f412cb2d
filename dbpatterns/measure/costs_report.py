"""What one call of each pattern costs, in one table: ``./lab costs``.

It joins two committed measurements, never a figure typed by hand: the round trips and the CPU
per call of a ``./lab bench`` run (``bench.json``: durable steps from Restate's journal, SQL
statements from ``pg_stat_statements``, CPU from ``/proc``) and the HTTP/2 frames, bytes and
socket writes per call of a ``./lab frames`` run (``frames.json``, sequential calls over open
connections). The bench figures are from one row of the run (a concurrency and a key
distribution); the frame counts do not depend on load. ``tests/test_readme.py`` checks the
table in ``bench/README.md`` against the committed files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dbpatterns.measure import tables
from dbpatterns.measure.bench_compare import load_rows
from dbpatterns.measure.frames import (
    WORKLOADS,  # the table's rows: what ./lab frames counts, in order
)

TO_SERVICE, FROM_SERVICE = "restate>service", "service>restate"


def markdown(bench_json: Path, frames_json: Path, concurrency: int, distribution: str) -> str:
    """The table; a workload missing from either file is left out."""
    bench_rows = {
        workload: row
        for (workload, dist, c), row in load_rows(bench_json).items()
        if (dist, c) == (distribution, concurrency)
    }
    frames = json.loads(frames_json.read_text())["results"]
    frame_rows = {r["workload"]: r["per_call"] for r in frames}
    header = [
        "workload",
        "durable steps",
        "SQL statements",
        "HTTP/2 frames in / out",
        "bytes in / out",
        "service writes to Restate",
        f"CPU ms svc / restate / pg (c={concurrency})",
        f"ops/s (c={concurrency})",
    ]
    rows = [
        _cells(workload, bench_rows[workload], frame_rows[workload])
        for workload in WORKLOADS
        if workload in bench_rows and workload in frame_rows
    ]
    return tables.markdown(header, rows) + "\n"


def _cells(workload: str, bench: dict[str, Any], frames: dict[str, dict[str, float]]) -> list[str]:
    into, out = frames[TO_SERVICE], frames[FROM_SERVICE]
    cpu = bench["cpu_ms_per_op"]
    return [
        f"`{workload}`",
        _count(bench["durable_steps_per_op"]),
        _count(bench["db_statements_per_op"]),
        f"{_count(into['frames'])} / {_count(out['frames'])}",
        f"{into['bytes']:.0f} / {out['bytes']:.0f}",
        _count(out["writes"]),
        " / ".join(f"{cpu[part]:.2f}" for part in ("service", "restate", "postgres")),
        f"{bench['throughput']:.0f}",
    ]


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")
