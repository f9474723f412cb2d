"""The one Markdown table writer of the lab: a header, its rule, one line per row, every cell
written as ``str`` with the ``|`` of a cell escaped, so a table renders whatever a cell holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def markdown(header: Sequence[object], rows: Iterable[Iterable[object]]) -> str:
    """The table, lines joined by newlines (no trailing one)."""
    lines = [row(header), "|" + " --- |" * len(header)]
    lines += [row(cells) for cells in rows]
    return "\n".join(lines)
