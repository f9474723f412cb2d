"""The READMEs' figures come from the committed results, not from memory, and their links
lead somewhere."""

from __future__ import annotations

import re

from dbpatterns.config import PROJECT_ROOT
from dbpatterns.measure import bench_compare, costs_report

#: ``<!-- compare NAME=RUN.json[,...] NAME=RUN.json[,...] -->`` (paths from bench/), the table,
#: ``<!-- compare:end -->``: a side-by-side table ``./lab compare`` made.
COMPARISON = re.compile(r"<!-- compare (\S+) (\S+) -->\n(.*?)<!-- compare:end -->", re.S)


def test_bench_readme_table_is_the_committed_results_table() -> None:
    readme = (PROJECT_ROOT / "bench" / "README.md").read_text()
    embedded = readme.split("<!-- bench:begin -->\n", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert embedded == (PROJECT_ROOT / "bench" / "results" / "bench.md").read_text()


def test_every_comparison_table_recomputes_from_the_runs_it_names() -> None:
    bench_dir = PROJECT_ROOT / "bench"
    readme = (bench_dir / "README.md").read_text()
    tables = COMPARISON.findall(readme)
    assert len(tables) >= 2, "the server before/after and the TypeScript side by side"

    def side(spec: str) -> bench_compare.Side:
        name, _, runs = spec.partition("=")
        return bench_compare.Side(name, tuple(bench_dir / run for run in runs.split(",")))

    for before, after, table in tables:
        assert table == bench_compare.markdown(side(before), side(after)), f"{before} {after}"


def test_the_cost_per_call_table_is_the_committed_bench_run_beside_the_frames_run() -> None:
    bench_dir = PROJECT_ROOT / "bench"
    readme = (bench_dir / "README.md").read_text()
    embedded = readme.split("<!-- costs -->\n", 1)[1].split("<!-- costs:end -->", 1)[0]
    results = bench_dir / "results"
    assert embedded == costs_report.markdown(
        results / "bench.json", results / "frames.json", concurrency=64, distribution="spread"
    )


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
