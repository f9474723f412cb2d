"""The quick profile's table: every cell once, then the random-kill storms.

The lab's credit handlers at every failpoint and across restarts (``chaos.cells``), the
invoices example, and the library at its API surface (``chaos.surface``): the shapes users'
handlers take, and the end of an invocation while its step is in flight.
"""

from __future__ import annotations

from chaos.cells import Cell
from chaos.lab_cells import (
    example_cells,
    fault_cells,
    janitor_cell,
    kill_storm_cell,
    outside_writer_cell,
    restart_cells,
    stranger_commit_cell,
    zombie_between_prepare_and_commit_cell,
)
from chaos.surface import surface_cells


def quick_cells(storm_operations: int = 200) -> list[Cell]:
    """Every cell once, then the random-kill storms."""
    return [
        *fault_cells(),
        outside_writer_cell(),
        *restart_cells(),
        janitor_cell(),
        zombie_between_prepare_and_commit_cell(),
        stranger_commit_cell(),
        *example_cells(),
        *surface_cells(),
        kill_storm_cell(storm_operations),
    ]
