"""The READMEs' figures come from the committed results, not from memory, and their links
lead somewhere."""

from __future__ import annotations

import re

from dbpatterns.config import PROJECT_ROOT


def test_bench_readme_table_is_the_committed_results_table() -> None:
    readme = (PROJECT_ROOT / "bench" / "README.md").read_text()
    embedded = readme.split("<!-- bench:begin -->\n", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert embedded == (PROJECT_ROOT / "bench" / "results" / "bench.md").read_text()


def test_every_relative_link_of_every_readme_leads_to_a_file() -> None:
    broken = []
    for readme in [
        PROJECT_ROOT / "README.md",
        *PROJECT_ROOT.glob("*/README.md"),
        *PROJECT_ROOT.glob("*/*/README.md"),
    ]:
        if "node_modules" in readme.parts or ".venv" in readme.parts:
            continue
        for target in re.findall(r"\]\(([^)#]+)\)", readme.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            if not (readme.parent / target).exists():
                broken.append(f"{readme.relative_to(PROJECT_ROOT)}: {target}")
    assert broken == []
