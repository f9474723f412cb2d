"""The cost table joins a bench run and a frames run row by row: every figure comes from one of
the two files, and a workload either file lacks is left out rather than filled in."""

from __future__ import annotations

import json
from pathlib import Path

from dbpatterns.measure import costs_report


def _direction(frames: float, writes: float) -> dict[str, float]:
    return {"frames": frames, "bytes": 100.4, "writes": writes}


def test_each_row_is_the_bench_row_beside_the_frame_count(tmp_path: Path) -> None:
    def bench_row(workload: str, concurrency: int, ops: float) -> dict[str, object]:
        return {
            "workload": workload,
            "distribution": "spread",
            "concurrency": concurrency,
            "throughput": ops,
            "durable_steps_per_op": 2.0,
            "db_statements_per_op": 5.0,
            "cpu_ms_per_op": {"service": 2.5, "restate": 2.25, "postgres": 0.5},
        }

    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "results": [
                    bench_row("idempotency.update", 16, 111.0),
                    bench_row("idempotency.update", 64, 356.2),
                    bench_row("keyed.update", 64, 500.0),  # no frames for it
                ]
            }
        )
    )
    frames = tmp_path / "frames.json"
    per_call = {
        costs_report.TO_SERVICE: _direction(6, 5),
        costs_report.FROM_SERVICE: _direction(5, 4.7),
    }
    frames.write_text(
        json.dumps({"results": [{"workload": "idempotency.update", "per_call": per_call}]})
    )
    table = costs_report.markdown(bench, frames, concurrency=64, distribution="spread")
    rows = table.splitlines()[2:]
    assert rows == [
        "| `idempotency.update` | 2 | 5 | 6 / 5 | 100 / 100 | 4.7 | 2.50 / 2.25 / 0.50 | 356 |"
    ]
