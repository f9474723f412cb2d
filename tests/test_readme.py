"""The README's figures come from the committed results, not from memory."""

from __future__ import annotations

from dbpatterns.config import PROJECT_ROOT


def test_readme_benchmark_table_is_the_committed_results_table() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    embedded = readme.split("<!-- bench:begin -->\n", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert embedded == (PROJECT_ROOT / "bench" / "results" / "bench.md").read_text()
