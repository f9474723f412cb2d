"""The results of a chaos run: a table in the terminal, the same as JSON and Markdown files, and a
PNG matrix of the verdicts (``chaos.matrix``).

Every headline figure is a sum of the rows under it: operations, anomalies by kind (each one
listed per operation), fault events by kind (with their effects apart), attempts per invocation.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import matrix
from chaos.faults import FaultCounts
from chaos.verdict import CellResult
from dbpatterns.measure import tables
from dbpatterns.service import failpoints

COLUMNS = [
    ("cell", "cell"),
    ("expected", "expected"),
    ("observed", "observed"),
    ("ops", "operations"),
    ("fault events", "fault_events"),
    ("dup", "duplicates"),
    ("lost", "lost_updates"),
    ("zombie SQL", "zombie_statements"),
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
            sql = row["zombie_sql"]
            row["zombie_statements"] = (
                "-" if sql is None else f"{sql['reached']} ran, {sql['refused']} refused"
            )
            rows.append(row)
        return rows

    def faults(self) -> dict[str, int]:
        """Fault events and effects by kind, summed over the cells."""
        total: dict[str, int] = {}
        for result in self.results:
            for kind, n in result.faults.as_dict().items():
                total[kind] = total.get(kind, 0) + n
        return total

    def anomalies(self) -> list[dict[str, Any]]:
        return [a for row in self.rows() for a in row["anomalies"]]

    def attempts(self) -> dict[str, int]:
        """Invocations by how many of their attempts reached the database, over every cell."""
        total: dict[str, int] = {}
        for row in self.rows():
            for n, count in row["attempts_reaching_db"].items():
                total[n] = total.get(n, 0) + count
        return dict(sorted(total.items(), key=lambda kv: int(kv[0])))

    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        return {
            "cells": len(rows),
            "passed": sum(1 for r in rows if r["passed"]),
            "failed": sum(1 for r in rows if not r["passed"]),
            "operations": sum(r["operations"] for r in rows),
            "fault_events": sum(r["fault_events"] for r in rows),
            "faults": self.faults(),
            "duplicates": sum(r["duplicates"] for r in rows),
            "lost_updates": sum(r["lost_updates"] for r in rows),
            "applied_though_failed": sum(r["applied_though_failed"] for r in rows),
            "anomalies_in_exactly_once_cells": sum(
                len(r["anomalies"]) for r in rows if r["expected"] == "exactly once"
            ),
            "attempts_reaching_db": self.attempts(),
            "late_writes": sum(len(r["late_writes"]) for r in rows),
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


ANOMALY_COLUMNS = [
    "cell",
    "failpoint",
    "kind",
    "handler",
    "user",
    "idempotency key",
    "invocation",
    "answer",
    "applied",
]


def _anomaly_cells(a: dict[str, Any]) -> list[str]:
    return [
        a["cell"],
        a["failpoint"] or "-",
        a["kind"],
        a["handler"],
        a["user_id"],
        a["idempotency_key"],
        a["invocation_id"] or "-",
        a["outcome"],
        f"{a['applied']}x",
    ]


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
    lines.append(_headline(s))
    lines.append(_fault_line(s["faults"]))
    for row in run.rows():
        if not row["passed"]:
            lines.append(f"FAIL {row['cell']}: " + "; ".join(row["problems"]))
    return "\n".join(lines)


def _headline(s: dict[str, Any]) -> str:
    return (
        f"{s['passed']}/{s['cells']} cells passed; {s['operations']} operations, "
        f"{s['fault_events']} fault events, {s['duplicates']} duplicate application(s), "
        f"{s['lost_updates']} lost update(s), {s['anomalies_in_exactly_once_cells']} anomalies "
        f"in exactly-once cells, {s['late_writes']} late write(s), {s['seconds']} s"
    )


def _fault_line(faults: dict[str, int]) -> str:
    events = ", ".join(f"{k} {faults.get(k, 0)}" for k in FaultCounts.EVENTS)
    return (
        f"fault events by kind: {events}; effects: sessions_terminated "
        f"{faults.get('sessions_terminated', 0)}; pauses {faults.get('service_paused', 0)} = "
        f"resumed {faults.get('zombies_resumed', 0)} + died while paused "
        f"{faults.get('paused_died', 0)} + still paused {faults.get('still_paused', 0)}; "
        f"node pauses {faults.get('nodes_paused', 0)}, resumed {faults.get('nodes_resumed', 0)}; "
        f"nodes cut off {faults.get('nodes_isolated', 0)}, healed {faults.get('nodes_healed', 0)}"
    )


def _produced_by(found: dict[str, Any] | None) -> str:
    """The line that says what produced the run (``dbpatterns.stack.provenance``)."""
    if not found:
        return "Produced by: not recorded (a run from before reports recorded it)."
    commit = found.get("commit") or "?"
    changed = found.get("changed_files")
    on_top = f" with {changed} changed file(s) on top" if changed else ""
    packages = ", ".join(f"{k} {v}" for k, v in (found.get("packages") or {}).items() if v)
    return (
        f"Produced by: commit `{commit[:12]}`{on_top}; service under "
        f"{found.get('service_server')}; restate-server {found.get('restate_server')}; "
        f"PostgreSQL {found.get('postgres')}; {packages}."
    )


def markdown(run: Run, matrix_png: str | None = None) -> str:
    data = run.as_dict()
    s = data["summary"]
    out = [
        f"# Chaos run: {run.profile} profile, {data['started']}",
        "",
        f"**{'PASS' if run.passed else 'FAIL'}**: {_headline(s)}.",
        "",
        _fault_line(s["faults"]) + ".",
        "",
        _produced_by(run.settings.get("produced_by")),
        "",
        "Attempts that reached the database, per invocation (invocations by count): "
        + (", ".join(f"{n}: {c}" for n, c in s["attempts_reaching_db"].items()) or "-")
        + ".",
        "",
    ]
    if matrix_png:
        out += [f"![verdicts]({matrix_png})", ""]
    out += [
        "Expected `duplicate` or `lost update` marks a negative control: the anomaly must show, "
        "or the harness failed to provoke it. `zombie SQL`: statements the zombie ran after it "
        "resumed, and statements refused because its session was gone.",
        "",
        tables.markdown([title for title, _ in COLUMNS], _cells_text(run.rows())),
    ]
    anomalies = run.anomalies()
    out += ["", f"## Anomalies, per operation ({len(anomalies)})", ""]
    if anomalies:
        out.append(tables.markdown(ANOMALY_COLUMNS, [_anomaly_cells(a) for a in anomalies]))
    else:
        out.append("None.")
    out += ["", "## Per cell", ""]
    for row in run.rows():
        out.append(f"### {row['cell']} ({row['verdict']})")
        out.append("")
        out.append(f"- expected {row['expected']} ({row['why']}); observed {row['observed']}")
        out.append(
            f"- operations: {row['operations']} ({row['acknowledged']} acknowledged, "
            f"{row['failed']} failed, {row['unknown']} unknown); applied per operation "
            f"(times: operations): {row['applications']}"
        )
        out.append(
            "- fault events: "
            + (", ".join(f"{k} {v}" for k, v in row["faults"].items() if v) or "none")
        )
        out.append(
            f"- attempts that reached the database (attempts: invocations): "
            f"{row['attempts_reaching_db'] or '-'}"
        )
        out += [f"- problem: {p}" for p in row["problems"]]
        out += [f"- note: {n}" for n in row["notes"]]
        out += [f"- user: {m}" for m in row["mismatched_users"]]
        out += [f"- not completed: `{i}`" for i in row["not_completed"]]
        out.append("")
    return "\n".join(out)


def write(run: Run, folder: Path) -> tuple[Path, Path, Path]:
    """``chaos-<profile>-<UTC time>.json``, ``.md`` and ``.png`` (the matrix) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.started))
    base = folder / f"chaos-{run.profile}-{stamp}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    png_path = base.with_suffix(".png")
    data = run.as_dict()
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    matrix.render(data, png_path)
    md_path.write_text(markdown(run, png_path.name) + "\n")
    return json_path, md_path, png_path
