"""A picture of a chaos run: one square per cell, failpoints down, faults across.

Each row is a handler at one of its failpoints (``keyed.update @ after-commit``), or, for a
storm, the handlers it drives joined with ``+`` and ``@ -`` (no failpoint). Each column is a
fault kind (``kill``, ``zombie``, ``restate-restart``, ``mixed-storm``, ...), in the order the
run met them. A square says what the checker observed and the per-operation counts under that
verdict: ``ops`` operations, ``dup`` duplicates, ``lost`` lost updates. A cell the run repeated
(a soak runs its storm once per round) is one square, its counts summed, marked ``xN rounds``;
it passes only if every round passed.

How to read the colours:

* green, **as promised**: the cell passed and the pattern kept its promise (``exactly once``,
  or ``not applied`` for an operation that fails and must leave nothing behind);
* blue, **control showed it**: a negative control passed, that is, it showed the anomaly it
  exists to show (``duplicate``, ``lost update``). Blue is not a pass for the pattern: it marks
  a known hole, proven to be there, and proves the checker can see it;
* red, **FAIL**: the cell did not get its expected outcome (an exactly-once cell that
  duplicated, a control that showed nothing, an inconsistent ledger, a cell not run);
* light grey, no text: the run has no cell for that failpoint and fault.

Usage: ``python -m chaos.matrix chaos/results/chaos-quick-....json [--out matrix.png]``; the PNG
goes next to the JSON unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text

AS_PROMISED = "as promised"
CONTROL_SHOWED_IT = "control showed it"
FAIL = "FAIL"
EMPTY = "empty"

# Expectations that are the pattern's promise; any other expectation is a negative control's
# anomaly ("duplicate", "lost update", ...).
PROMISES = frozenset(
    {"exactly once", "not applied", "applied, call killed", "as answered", "at most once"}
)

COLOURS = {
    AS_PROMISED: "#8fd18f",
    CONTROL_SHOWED_IT: "#8ec3ec",
    FAIL: "#d7301f",
    EMPTY: "#eeeeee",
}
TEXT_COLOURS = {AS_PROMISED: "#123312", CONTROL_SHOWED_IT: "#0b2a45", FAIL: "white", EMPTY: "black"}
LEGEND = {
    AS_PROMISED: "as promised (exactly once / not applied)",
    CONTROL_SHOWED_IT: "control showed it (negative control: its anomaly appeared)",
    FAIL: "FAIL (expected outcome not observed)",
    EMPTY: "no such cell in this run",
}

NO_FAILPOINT = "-"


@dataclass(frozen=True)
class MatrixCell:
    """One square: its status (a key of ``COLOURS``) and the lines written in it."""

    status: str
    lines: tuple[str, ...] = ()
    rounds: int = 0


EMPTY_CELL = MatrixCell(EMPTY)


@dataclass(frozen=True)
class Matrix:
    """Row labels, column labels, and ``cells[row][column]`` (every position filled)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: tuple[tuple[MatrixCell, ...], ...]

    def at(self, row: str, column: str) -> MatrixCell:
        return self.cells[self.rows.index(row)][self.columns.index(column)]


def row_label(row: dict[str, Any]) -> str:
    """``handler @ failpoint`` with the handler's prefix cut from the failpoint name."""
    handlers = [str(h) for h in row["handlers"]]
    failpoint = row["failpoint"]
    if not failpoint:
        point = NO_FAILPOINT
    else:
        point = str(failpoint)
        for handler in handlers:
            if point.startswith(handler + "."):
                point = point[len(handler) + 1 :]
                break
    return f"{'+'.join(handlers)} @ {point}"


def status_of(passed: bool, expected: str) -> str:
    if not passed:
        return FAIL
    return AS_PROMISED if expected in PROMISES else CONTROL_SHOWED_IT


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _cell(group: list[dict[str, Any]]) -> MatrixCell:
    passed = all(bool(r["passed"]) for r in group)
    expected = _distinct([str(r["expected"]) for r in group])
    observed = _distinct([str(r["observed"]) for r in group])
    ops = sum(int(r["operations"]) for r in group)
    dup = sum(int(r["duplicates"]) for r in group)
    lost = sum(int(r["lost_updates"]) for r in group)
    lines = [" / ".join(observed), f"ops {ops}, dup {dup}, lost {lost}"]
    if not passed:
        lines.insert(1, f"expected {' / '.join(expected)}")
    if len(group) > 1:
        lines.append(f"x{len(group)} rounds")
    return MatrixCell(status_of(passed, expected[0]), tuple(lines), len(group))


def grid(rows: list[dict[str, Any]]) -> Matrix:
    """The matrix of a report's ``cells`` rows; repeated cells merge into one square."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    row_labels: dict[str, None] = {}
    columns: dict[str, None] = {}
    for row in rows:
        label, fault = row_label(row), str(row["fault"])
        row_labels.setdefault(label)
        columns.setdefault(fault)
        groups.setdefault((label, fault), []).append(row)
    cells = tuple(
        tuple(
            _cell(groups[(label, fault)]) if (label, fault) in groups else EMPTY_CELL
            for fault in columns
        )
        for label in row_labels
    )
    return Matrix(tuple(row_labels), tuple(columns), cells)


def title(report: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = report["cells"]
    passed = sum(1 for r in rows if r["passed"])
    profile = report.get("profile", "?")
    started = report.get("started", "?")
    return f"{profile} profile, {started}: {passed}/{len(rows)} cells passed"


def subtitle(report: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = report["cells"]
    ops = sum(int(r["operations"]) for r in rows)
    dup = sum(int(r["duplicates"]) for r in rows)
    lost = sum(int(r["lost_updates"]) for r in rows)
    return f"{ops} operations, {dup} duplicates, {lost} lost updates (summed over the cells)"


# Layout, in inches at DPI: a cell is COLUMN_WIDTH x ROW_HEIGHT, so ~10 fault columns next to
# the row labels come to ~1600 px wide, and ~25 rows to ~1300 px high.
DPI = 110
COLUMN_WIDTH = 1.1
ROW_HEIGHT = 0.5
LABEL_FONT = 8.5
CELL_FONT = 6.8
MIN_CELL_FONT = 4.0
LABEL_CHARS = 48  # longer row labels (storms) wrap after a "+"


def wrap_label(label: str, limit: int = LABEL_CHARS) -> str:
    """A storm's long ``a+b+c @ -`` label on several lines, broken after a ``+``."""
    if len(label) <= limit:
        return label
    lines = [""]
    for part in label.replace("+", "+\n").split("\n"):
        if lines[-1] and len(lines[-1]) + len(part) > limit:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _draw_cells(ax: Axes, matrix: Matrix) -> list[Text]:
    texts = []
    for i, cells in enumerate(matrix.cells):
        for j, cell in enumerate(cells):
            colour = COLOURS[cell.status]
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", lw=1.5))
            if cell.lines:
                texts.append(
                    ax.text(
                        j + 0.5,
                        i + 0.5,
                        "\n".join(cell.lines),
                        ha="center",
                        va="center",
                        fontsize=CELL_FONT,
                        color=TEXT_COLOURS[cell.status],
                        linespacing=1.25,
                    )
                )
    # A thin rule between handlers, so each handler's failpoints read as one block.
    handlers = [label.split(" @ ")[0] for label in matrix.rows]
    for i in range(1, len(handlers)):
        if handlers[i] != handlers[i - 1]:
            ax.axhline(i, color="#555555", lw=0.8)
    return texts


def _fit(texts: list[Text]) -> None:
    """Shrink any text wider or taller than its cell (a long new outcome name, many lines).

    Agg draws glyphs at whole pixel sizes, so the width moves in steps: shrink until it fits.
    """
    room_w, room_h = 0.97 * COLUMN_WIDTH * DPI, 0.92 * ROW_HEIGHT * DPI
    for text in texts:
        size = CELL_FONT
        box = text.get_window_extent()
        while (box.width > room_w or box.height > room_h) and size > MIN_CELL_FONT:
            size = max(MIN_CELL_FONT, size - 0.3)
            text.set_fontsize(size)
            box = text.get_window_extent()


def render(report: dict[str, Any], path: Path) -> Path:
    """Draw the report's matrix to ``path`` (PNG) and return ``path``."""
    matrix = grid(list(report["cells"]))
    n_rows, n_cols = len(matrix.rows), len(matrix.columns)
    height = max(1, n_rows) * ROW_HEIGHT
    # A bare Figure on an Agg canvas: no pyplot state, no display needed.
    fig = Figure(figsize=(max(1, n_cols) * COLUMN_WIDTH, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself to fig
    # The axes fill the figure, so a cell has its nominal size; labels, title and legend lie
    # outside it and the tight bounding box takes them in when saving.
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    texts = _draw_cells(ax, matrix)
    ax.set_xlim(0, max(1, n_cols))
    ax.set_ylim(max(1, n_rows), 0)
    ax.set_xticks([j + 0.5 for j in range(n_cols)])
    ax.set_xticklabels(matrix.columns, rotation=35, ha="left", fontsize=LABEL_FONT)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(n_rows)])
    ax.set_yticklabels(
        [wrap_label(r) for r in matrix.rows], fontsize=LABEL_FONT, family="monospace"
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.draw_without_rendering()  # lays the text out, so its extents can be measured
    _fit(texts)
    # The title sits just above the tallest (rotated) column label.
    tops = [t.get_window_extent().y1 for t in ax.get_xticklabels()]
    above_axes = (max(tops, default=0.0) - ax.get_window_extent().y1) * 72 / DPI
    ax.set_title(
        f"{title(report)}\n{subtitle(report)}", fontsize=11, loc="left", pad=above_axes + 10
    )
    ax.legend(
        handles=[
            Patch(facecolor=COLOURS[s], edgecolor="#999999", label=text)
            for s, text in LEGEND.items()
        ],
        loc="upper left",
        bbox_to_anchor=(0.0, -0.12 / height),
        ncols=2 if n_cols >= 5 else 1,
        fontsize=LABEL_FONT,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.25, facecolor="white")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.matrix", description="Draw a chaos run report as a PNG matrix."
    )
    parser.add_argument("report", type=Path, help="a chaos run report (JSON)")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: REPORT with .png)")
    args = parser.parse_args(argv)
    source: Path = args.report
    try:
        report = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(
            f"cannot read chaos report {source}: {exc}; pass a JSON file from chaos/results/",
            file=sys.stderr,
        )
        return 2
    if not isinstance(report, dict) or not isinstance(report.get("cells"), list):
        print(
            f"{source} is not a chaos run report (no 'cells' list); "
            "pass a JSON file written by `./lab chaos`",
            file=sys.stderr,
        )
        return 2
    out: Path = args.out if args.out is not None else source.with_suffix(".png")
    print(render(report, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
