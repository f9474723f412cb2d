"""The results of a chaos run: a table in the terminal, and the same as JSON and Markdown files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.scenarios import CellResult
from dbpatterns import failpoints

COLUMNS = [
    ("cell", "cell"),
    ("expected", "expected"),
    ("observed", "observed"),
    ("ops", "operations"),
    ("faults", "faults_injected"),
    ("dup", "duplicates"),
    ("lost", "lost_updates"),
    ("prepared", "prepared_transactions_left"),
    ("not done", "invocations_not_completed"),
    ("idle tx", "idle_in_transaction"),
    ("s", "seconds"),
    ("verdict", "verdict"),
]


@dataclass
class Run:
    profile: str
    started: float = field(default_factory=time.time)
    results: list[CellResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for result in self.results:
            row = result.as_dict()
            row["verdict"] = "PASS" if result.passed else "FAIL"
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        return {
            "cells": len(rows),
            "passed": sum(1 for r in rows if r["passed"]),
            "failed": sum(1 for r in rows if not r["passed"]),
            "operations": sum(r["operations"] for r in rows),
            "faults_injected": sum(r["faults_injected"] for r in rows),
            "duplicates": sum(r["duplicates"] for r in rows),
            "lost_updates": sum(r["lost_updates"] for r in rows),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "settings": self.settings,
            "summary": self.summary(),
            "cells": self.rows(),
            "failpoints": dict(failpoints.CATALOGUE),
        }


def _cells_text(rows: Iterable[dict[str, Any]]) -> list[list[str]]:
    return [[str(row[key]) for _, key in COLUMNS] for row in rows]


def table(run: Run) -> str:
    """A plain-text table for the terminal."""
    header = [title for title, _ in COLUMNS]
    body = _cells_text(run.rows())
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    s = run.summary()
    lines.append("")
    lines.append(
        f"{s['passed']}/{s['cells']} cells passed; {s['operations']} operations, "
        f"{s['faults_injected']} faults, {s['duplicates']} duplicates, "
        f"{s['lost_updates']} lost updates, {s['seconds']} s"
    )
    for row in run.rows():
        if not row["passed"]:
            lines.append(f"FAIL {row['cell']}: " + "; ".join(row["problems"]))
    return "\n".join(lines)


def markdown(run: Run) -> str:
    data = run.as_dict()
    s = data["summary"]
    out = [
        f"# Chaos run: {run.profile} profile, {data['started']}",
        "",
        f"**{'PASS' if run.passed else 'FAIL'}**: {s['passed']}/{s['cells']} cells passed; "
        f"{s['operations']} operations, {s['faults_injected']} faults injected, "
        f"{s['duplicates']} duplicates, {s['lost_updates']} lost updates, {s['seconds']} s.",
        "",
        "Expected `duplicate` marks a negative control: the anomaly must show, or the harness "
        "failed to provoke it.",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(cells) + " |" for cells in _cells_text(run.rows())]
    out += ["", "## Per cell", ""]
    for row in run.rows():
        out.append(f"### {row['cell']} ({row['verdict']})")
        out.append("")
        out.append(f"- expected {row['expected']} ({row['why']}); observed {row['observed']}")
        out.append(
            f"- operations: {row['operations']} ({row['acknowledged']} acknowledged, "
            f"{row['failed']} failed, {row['unknown']} unknown); faults: "
            + ", ".join(f"{k} {v}" for k, v in row["faults"].items() if v)
        )
        out += [f"- problem: {p}" for p in row["problems"]]
        out += [f"- note: {n}" for n in row["notes"]]
        out += [f"- user: {m}" for m in row["mismatched_users"]]
        out += [f"- not completed: `{i}`" for i in row["not_completed"]]
        out.append("")
    return "\n".join(out)


def write(run: Run, folder: Path) -> tuple[Path, Path]:
    """``chaos-<profile>-<UTC time>.json`` and ``.md`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.started))
    base = folder / f"chaos-{run.profile}-{stamp}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    json_path.write_text(json.dumps(run.as_dict(), indent=2) + "\n")
    md_path.write_text(markdown(run) + "\n")
    return json_path, md_path
