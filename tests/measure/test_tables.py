"""The one Markdown table writer: the lines every report has always written, and a cell that
holds a ``|`` or a line break still renders as one cell."""

from __future__ import annotations

from dbpatterns.measure import tables


def test_a_table_is_its_header_its_rule_and_one_line_per_row() -> None:
    table = tables.markdown(["workload", "ops/s"], [["`keyed.update`", "356"], ["x", 1.5]])
    assert table == "| workload | ops/s |\n| --- | --- |\n| `keyed.update` | 356 |\n| x | 1.5 |"


def test_a_table_without_rows_is_its_header_and_rule() -> None:
    assert tables.markdown(["a"], []) == "| a |\n| --- |"


def test_a_pipe_or_a_line_break_in_a_cell_stays_inside_the_cell() -> None:
    assert tables.row(["a|b", "two\nlines"]) == "| a\\|b | two lines |"
