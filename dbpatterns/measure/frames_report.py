"""``./lab frames``'s tables: the live text table, the Markdown and the JSON of the results.

Every figure is a total over the calls divided by their number (``WireCounts``); ``n/a`` where
restate-server could not be traced (it runs in a container).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dbpatterns.measure import tables
from dbpatterns.measure.frame_counting import (
    DIRECTIONS,
    SyscallCount,
    WireCounts,
)

#: Frame types with a column of their own; the others add up in ``other``.
COLUMN_TYPES = ("DATA", "HEADERS", "WINDOW_UPDATE", "SETTINGS", "PING", "RST_STREAM")
COLUMNS = ("workload", "direction", "frames", *COLUMN_TYPES, "other", "segments", "bytes",
           "writes", "reads")  # fmt: skip


def per_call(result: WireCounts, direction: str) -> dict[str, float | None]:
    """One direction's figures per call, by column."""
    traffic = result.frames.traffic[direction]
    n = result.calls
    frames = {kind: traffic.frames[kind] / n for kind in COLUMN_TYPES}
    total = sum(traffic.frames.values()) / n
    return {
        "frames": total,
        **frames,
        "other": total - sum(frames.values()),
        "segments": traffic.segments / n,
        "bytes": traffic.payload_bytes / n,
        "writes": result.sender_writes(direction),
        "reads": result.receiver_reads(direction),
    }


def _figure(value: float | None, column: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if column == "bytes" else f"{value:.2f}"


def header() -> str:
    return _line(COLUMNS)


def _line(cells: Sequence[str]) -> str:
    widths = (24, 16) + (8,) * (len(COLUMNS) - 2)
    return "  ".join(
        f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def rows(result: WireCounts) -> list[str]:
    lines = []
    for i, direction in enumerate(DIRECTIONS):
        figures = per_call(result, direction)
        name = result.workload if i == 0 else ""
        lines.append(_line([name, direction, *(_figure(figures[c], c) for c in COLUMNS[2:])]))
    note = excluded_note(result)
    if note:
        lines.append(f"{'':<24}  ({note})")
    return lines


def excluded_note(result: WireCounts) -> str:
    """What the figures leave out (not from the calls), and connections opened, whose setup
    they include."""
    frames = result.frames
    parts = [
        (frames.excluded_streams, "streams excluded"),
        (frames.excluded_frames, "frames excluded"),
        (frames.excluded_segments, "segments excluded"),
        (frames.other_connections, "other connections excluded"),
        (frames.connections_opened, "connections opened while capturing, setup included"),
        (result.connections_opened_traced, "connections opened while tracing, setup included"),
    ]
    return ", ".join(f"{n} {what}" for n, what in parts if n)


SERVICE_PEERS = ("restate", "postgres", "other")
RESTATE_PEERS = ("service", "ingress", "other")


def syscall_cells(count: SyscallCount | None, peers: Sequence[str]) -> list[str]:
    if count is None:
        return ["n/a"] * len(peers)
    return [f"{count.per_call(p, 'writes'):.2f} / {count.per_call(p, 'reads'):.2f}" for p in peers]


def _frame_cells(result: WireCounts, direction: str) -> list[str]:
    figures = per_call(result, direction)
    return [f"`{result.workload}`", direction, *(_figure(figures[c], c) for c in COLUMNS[2:])]


def markdown(results: Sequence[WireCounts]) -> str:
    frame_rows = [_frame_cells(r, direction) for r in results for direction in DIRECTIONS]
    sys_cols = ["workload", *(f"service: {p} w / r" for p in SERVICE_PEERS),
                *(f"restate-server: {p} w / r" for p in RESTATE_PEERS)]  # fmt: skip
    sys_rows = [
        [f"`{r.workload}`", *syscall_cells(r.service, SERVICE_PEERS),
         *syscall_cells(r.restate, RESTATE_PEERS)]
        for r in results
    ]  # fmt: skip
    lines = [tables.markdown(COLUMNS, frame_rows), "", tables.markdown(sys_cols, sys_rows)]
    notes = [f"`{r.workload}`: {excluded_note(r)}" for r in results if excluded_note(r)]
    if notes:
        lines += ["", "Left out, or added: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def syscall_table(results: Sequence[WireCounts]) -> str:
    """The socket syscalls per call by peer, as text (writes / reads)."""
    head = [
        "workload",
        *(f"svc:{p}" for p in SERVICE_PEERS),
        *(f"restate:{p}" for p in RESTATE_PEERS),
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:<24}" if i == 0 else f"{c:>15}" for i, c in enumerate(cells))

    lines = ["socket syscalls per call (writes / reads), by peer", line(head)]
    for r in results:
        cells = [r.workload, *syscall_cells(r.service, SERVICE_PEERS),
                 *syscall_cells(r.restate, RESTATE_PEERS)]  # fmt: skip
        lines.append(line(cells))
    return "\n".join(lines)


def as_json(result: WireCounts) -> dict[str, Any]:
    n = result.calls

    def syscalls(count: SyscallCount | None) -> dict[str, Any] | None:
        if count is None:
            return None
        peers = sorted({peer for peer, _ in count.counts})
        return {
            "per_call": {
                peer: {kind: count.counts[(peer, kind)] / n for kind in ("writes", "reads")}
                | {f"{kind}_failed": count.failed[(peer, kind)] / n for kind in ("writes", "reads")}
                for peer in peers
            },
            "by_name_per_call": {name: c / n for name, c in sorted(count.by_name.items())},
            "outside_the_calls": count.excluded,
        }

    frames = result.frames
    return {
        "workload": result.workload,
        "calls": n,
        "per_call": {
            direction: {
                **per_call(result, direction),
                "frames_by_type": {
                    kind: c / n for kind, c in sorted(frames.traffic[direction].frames.items())
                },
            }
            for direction in DIRECTIONS
        },
        "frames_of_each_call": frames.frames_per_call,
        "warmup_calls": result.warmup_calls,
        "excluded": {
            "streams": frames.excluded_streams,
            "frames": frames.excluded_frames,
            "segments": frames.excluded_segments,
            "other_connections": frames.other_connections,
        },
        "connections_opened": {
            "capture_pass": frames.connections_opened,
            "trace_pass": result.connections_opened_traced,
        },
        "syscalls": {"service": syscalls(result.service), "restate": syscalls(result.restate)},
    }


def write_results(results: Sequence[WireCounts], folder: Path, meta: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frames.json"
    document = {"meta": meta, "results": [as_json(r) for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")
    (folder / "frames.md").write_text(markdown(results))
    return path
