"""The generated parts of chaos/README.md: the failpoint catalogue and the expected outcomes.

``python -m chaos.docs`` rewrites them from the code (``failpoints.CATALOGUE`` and
``chaos.cells``); a test fails when the README is out of step.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from chaos.cells import Cell
from chaos.table import quick_cells
from dbpatterns.measure import tables
from dbpatterns.service import failpoints

README = Path(__file__).resolve().parent / "README.md"


def catalogue_markdown() -> str:
    rows = []
    for name, text in failpoints.CATALOGUE.items():
        where, _, tests = text.partition(" -- ")
        rows.append([f"`{name}`", where, tests])
    return tables.markdown(["failpoint", "where", "a fault there tests"], rows)


def _expected(cell: Cell) -> str:
    return f"**{cell.expect}**" if cell.expect.is_control else str(cell.expect)


def outcomes_markdown() -> str:
    rows = [
        [
            ", ".join(h.name for h in cell.handlers),
            cell.where,
            cell.fault,
            cell.operations,
            _expected(cell),
            cell.why,
        ]
        for cell in quick_cells()
    ]
    return tables.markdown(["handler", "failpoint", "fault", "ops", "expected", "why"], rows)


BLOCKS = {"catalogue": catalogue_markdown, "outcomes": outcomes_markdown}


def _replacement(block: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m[1] + block + "\n" + m[2]


def render(text: str) -> str:
    """``text`` with each generated block (between its markers) written afresh."""
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- generated:{name} --> block")
        text = pattern.sub(_replacement(make()), text)
    return text


def main() -> int:
    README.write_text(render(README.read_text()))
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
