"""``./lab bench`` records in its run's meta what it ran under: ``rtt_ms``, the round trip
``--rtt-ms`` put on the deployment's links (None without it), and which service it measured.
The benchmark itself is stood in for; ``tests/measure`` runs the real one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dbpatterns.cli import parser
from dbpatterns.cli.measure import cmd_bench
from dbpatterns.config import Settings
from dbpatterns.measure import bench
from dbpatterns.measure.bench_row import BenchRow
from dbpatterns.stack import LabError

ROW = BenchRow(
    workload="baseline.noop", distribution="spread", concurrency=1, load="wrk", duration=1.0,
    ops=10, errors=0, throughput=10.0, p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, max_ms=1.0,
    db_write_transactions_per_op=0.0, db_statements_per_op=0.0, durable_steps_per_op=0.0,
    cpu_ms_per_op={"service": 1.0}, ledger_exact=True,
)  # fmt: skip


def run_bench(
    monkeypatch: pytest.MonkeyPatch, out: Path, *argv: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``bench argv`` with the benchmark stood in for: the run's meta, and what the benchmark
    was asked."""
    asked: dict[str, Any] = {}

    def benchmark(settings: Settings, **kwargs: Any) -> list[BenchRow]:
        asked.update(kwargs)
        return [ROW]

    monkeypatch.setattr(bench, "benchmark", benchmark)
    args = parser().parse_args(["bench", *argv, "--out", str(out)])
    assert cmd_bench(Settings(home=out), args) == 0
    meta: dict[str, Any] = json.loads((out / "bench.json").read_text())["meta"]
    return meta, asked


def test_a_bench_at_a_round_trip_time_records_it_and_the_service_behind_the_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    meta, asked = run_bench(monkeypatch, tmp_path, "--rtt-ms", "0.5")
    assert asked["rtt_ms"] == 0.5
    assert meta["rtt_ms"] == 0.5
    assert meta["service"] == "the bench's own, behind the delay proxy"


def test_a_bench_on_loopback_records_no_round_trip_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    meta, asked = run_bench(monkeypatch, tmp_path)
    assert asked["rtt_ms"] is None
    assert meta["rtt_ms"] is None
    assert meta["service"] == "the lab's"


def test_a_round_trip_time_and_another_service_process_are_refused_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(LabError, match="not both"):
        run_bench(monkeypatch, tmp_path, "--rtt-ms", "2", "--service-pid", "1")
