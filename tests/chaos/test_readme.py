"""chaos/README.md keeps its generated tables (failpoints, expected outcomes) in step with the
code. No stack needed."""

from __future__ import annotations

from chaos import docs
from dbpatterns.service import failpoints


def test_readme_lists_every_failpoint_and_every_cell_as_the_code_declares_them() -> None:
    text = docs.README.read_text()
    assert docs.render(text) == text, "chaos/README.md is out of date: run python -m chaos.docs"
    for name in failpoints.CATALOGUE:
        assert f"`{name}`" in text
