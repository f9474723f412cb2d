"""A side-by-side table recomputes from the runs it names: means over a side's runs, the spread
of its throughput, and the ratio of the means."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dbpatterns.cli.measure import side_of
from dbpatterns.measure import bench_compare
from dbpatterns.stack import LabError


def run(path: Path, rows: list[tuple[str, int, float, float, float | None]]) -> Path:
    """A bench.json with ``(workload, c, ops/s, p99 ms, service ms/op)`` rows."""
    results: list[dict[str, Any]] = [
        {
            "workload": workload,
            "distribution": "spread",
            "concurrency": c,
            "throughput": ops,
            "p50_ms": p99 / 2,
            "p99_ms": p99,
            "cpu_ms_per_op": {"restate": 1.0} | ({} if svc is None else {"service": svc}),
        }
        for workload, c, ops, p99, svc in rows
    ]
    path.write_text(json.dumps({"meta": {}, "results": results}))
    return path


def test_a_side_of_two_runs_shows_their_mean_and_spread_and_the_ratio_of_means(
    tmp_path: Path,
) -> None:
    a1 = run(tmp_path / "a1.json", [("keyed.update", 16, 300, 90, 2.0)])
    a2 = run(tmp_path / "a2.json", [("keyed.update", 16, 340, 110, 2.2)])
    b1 = run(tmp_path / "b1.json", [("keyed.update", 16, 480, 60, 1.5)])
    table = bench_compare.markdown(
        bench_compare.Side("old", (a1, a2)), bench_compare.Side("new", (b1,))
    )
    header, _, line = table.splitlines()
    assert "old ops/s | new ops/s | new/old" in header
    assert line == (
        "| `keyed.update` | spread | 16 | 320 (300-340) | 480 | 1.50 | 50 / 30 | 100 / 60 "
        "| 2.10 / 1.50 | 1.00 / 1.00 |"
    )


def test_only_rows_every_run_of_both_sides_has_are_compared(tmp_path: Path) -> None:
    a = run(
        tmp_path / "a.json",
        [("baseline.noop", 16, 800, 40, 1.0), ("simple.read", 16, 600, 50, 1.2)],
    )
    b = run(tmp_path / "b.json", [("simple.read", 16, 500, 60, 0.8)])
    table = bench_compare.markdown(bench_compare.Side("a", (a,)), bench_compare.Side("b", (b,)))
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| `simple.read`"]


def test_a_figure_missing_from_a_run_shows_as_a_dash_not_as_a_partial_mean(tmp_path: Path) -> None:
    a1 = run(tmp_path / "a1.json", [("simple.read", 64, 600, 50, 1.0)])
    a2 = run(tmp_path / "a2.json", [("simple.read", 64, 600, 50, None)])
    table = bench_compare.markdown(
        bench_compare.Side("a", (a1, a2)), bench_compare.Side("b", (a1,))
    )
    assert "| - / 1.00 |" in table


@pytest.mark.parametrize("spec", ["nofiles=", "=a.json", "justaname"])
def test_a_side_that_names_no_runs_is_refused(spec: str) -> None:
    with pytest.raises(LabError, match="not a side"):
        side_of(spec)


def test_a_side_naming_a_missing_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no such run"):
        side_of(f"a={tmp_path / 'absent.json'}")
