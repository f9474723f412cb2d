"""The verdict matrix (``chaos.matrix``) from report rows: statuses, aggregation, the PNG.

Pure: no stack, no servers. The rows are shaped as ``chaos.report`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chaos import matrix
from chaos.matrix import AS_PROMISED, COLOURS, CONTROL_SHOWED_IT, EMPTY, FAIL
from dbpatterns.config import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "chaos" / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STORM = ["keyed.updateConditional", "idempotency.update", "twoPhaseCommit.update"]


def row(
    handlers: list[str],
    failpoint: str | None,
    fault: str,
    expected: str = "exactly once",
    observed: str | None = None,
    passed: bool = True,
    operations: int = 1,
    duplicates: int = 0,
    lost_updates: int = 0,
) -> dict[str, Any]:
    point = failpoint.removeprefix(handlers[0] + ".") if failpoint else "-"
    return {
        "cell": f"{'+'.join(handlers)}@{point}/{fault}",
        "handlers": handlers,
        "failpoint": failpoint,
        "fault": fault,
        "expected": expected,
        "observed": expected if observed is None else observed,
        "passed": passed,
        "operations": operations,
        "duplicates": duplicates,
        "lost_updates": lost_updates,
        "some_future_key": {"ignored": True},
    }


def test_a_failed_cell_is_fail_whatever_it_expected() -> None:
    rows = [
        row(
            ["keyed.update"],
            "keyed.update.before-write",
            "kill",
            observed="duplicate",
            passed=False,
        ),
        row(
            ["keyed.update"],
            "keyed.update.after-commit",
            "kill",
            "duplicate",
            "exactly once",
            False,
        ),
    ]
    m = matrix.grid(rows)
    failed = m.at("keyed.update @ before-write", "kill")
    assert failed.status == FAIL
    assert failed.lines[0] == "duplicate"
    assert "expected exactly once" in failed.lines
    assert m.at("keyed.update @ after-commit", "kill").status == FAIL


def test_a_negative_control_that_showed_its_anomaly_is_not_green() -> None:
    rows = [
        row(["keyed.update"], "keyed.update.after-commit", "kill", "duplicate", duplicates=1),
        row(
            ["idempotency.update"],
            "idempotency.update.before-claim",
            "zombie-after-token-expiry",
            "lost update",
            lost_updates=1,
        ),
    ]
    m = matrix.grid(rows)
    control = m.at("keyed.update @ after-commit", "kill")
    assert control.status == CONTROL_SHOWED_IT
    assert control.lines == ("duplicate", "ops 1, dup 1, lost 0")
    lost = m.at("idempotency.update @ before-claim", "zombie-after-token-expiry")
    assert lost.status == CONTROL_SHOWED_IT
    assert COLOURS[CONTROL_SHOWED_IT] != COLOURS[AS_PROMISED]
    assert len({COLOURS[s] for s in (AS_PROMISED, CONTROL_SHOWED_IT, FAIL, EMPTY)}) == 4


def test_an_exactly_once_cell_and_a_not_applied_cell_are_as_promised() -> None:
    rows = [
        row(["keyed.updateConditional"], "keyed.updateConditional.after-commit", "zombie"),
        row(
            ["twoPhaseCommit.update"],
            "twoPhaseCommit.update.before-commit",
            "invocation-killed",
            "not applied",
        ),
    ]
    m = matrix.grid(rows)
    cell = m.at("keyed.updateConditional @ after-commit", "zombie")
    assert cell.status == AS_PROMISED
    assert cell.lines == ("exactly once", "ops 1, dup 0, lost 0")
    assert m.at("twoPhaseCommit.update @ before-commit", "invocation-killed").status == AS_PROMISED


def test_repeated_soak_rounds_aggregate_into_one_cell_with_summed_counts() -> None:
    rounds = [row(STORM, None, "mixed-storm", operations=500) for _ in range(21)]
    rounds.append(
        row(
            STORM,
            None,
            "mixed-storm",
            observed="lost update",
            passed=False,
            operations=500,
            lost_updates=2,
        )
    )
    m = matrix.grid(rounds)
    assert m.rows == ("keyed.updateConditional+idempotency.update+twoPhaseCommit.update @ -",)
    assert m.columns == ("mixed-storm",)
    cell = m.cells[0][0]
    assert cell.rounds == 22
    assert cell.status == FAIL  # one failed round fails the cell
    assert "ops 11000, dup 0, lost 2" in cell.lines
    assert cell.lines[-1] == "x22 rounds"


def test_rows_and_columns_keep_first_seen_order_and_missing_cells_are_empty() -> None:
    rows = [
        row(["keyed.update"], "keyed.update.before-write", "zombie", "duplicate"),
        row(["keyed.update"], "keyed.update.before-write", "kill"),
        row(["idempotency.update"], "idempotency.update.before-commit", "kill"),
        row(["idempotency.update"], "idempotency.update.before-commit", "brand-new-fault"),
    ]
    m = matrix.grid(rows)
    assert m.rows == ("keyed.update @ before-write", "idempotency.update @ before-commit")
    assert m.columns == ("zombie", "kill", "brand-new-fault")
    assert m.at("idempotency.update @ before-commit", "zombie") == matrix.EMPTY_CELL
    assert m.at("keyed.update @ before-write", "brand-new-fault").lines == ()
    assert sum(c.status != EMPTY for cells in m.cells for c in cells) == len(rows)


def test_a_storm_label_wraps_after_a_plus_and_keeps_every_handler() -> None:
    label = matrix.row_label(row(STORM, None, "kill-storm"))
    wrapped = matrix.wrap_label(label)
    assert wrapped.replace("\n", "") == label
    assert all(len(line) <= matrix.LABEL_CHARS for line in wrapped.splitlines())
    assert matrix.wrap_label("keyed.update @ before-write") == "keyed.update @ before-write"


REPORTS = sorted(RESULTS.glob("*.json"))


@pytest.mark.parametrize("source", REPORTS, ids=[p.name for p in REPORTS])
def test_render_writes_a_png_for_each_committed_report(source: Path, tmp_path: Path) -> None:
    report = json.loads(source.read_text())
    out = matrix.render(report, tmp_path / "matrix.png")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    rows = report["cells"]
    assert matrix.title(report).endswith(
        f"{sum(r['passed'] for r in rows)}/{len(rows)} cells passed"
    )


def test_the_committed_reports_are_there_to_draw() -> None:
    assert len(REPORTS) >= 2


def test_main_writes_the_png_next_to_the_report_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "chaos-quick-x.json"
    source.write_text(
        json.dumps({"profile": "quick", "started": "x", "cells": [row(STORM, None, "kill-storm")]})
    )
    assert matrix.main([str(source)]) == 0
    assert (tmp_path / "chaos-quick-x.png").read_bytes().startswith(PNG_SIGNATURE)
    assert capsys.readouterr().out.strip() == str(tmp_path / "chaos-quick-x.png")
    assert matrix.main([str(source), "--out", str(tmp_path / "elsewhere" / "m.png")]) == 0
    assert (tmp_path / "elsewhere" / "m.png").exists()
    assert matrix.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read chaos report" in capsys.readouterr().err
