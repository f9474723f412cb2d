"""The install check's own judgements, without building anything: a wheel of the library alone
passes, one with anything of the lab or a command in it does not; the library's README states
the count of the packages it lists."""

from __future__ import annotations

from tests.install.check import (
    LIBRARY_README,
    installs_block,
    listed_installs,
    wheel_problems,
)

DIST_INFO = "dbpatterns-0.1.0.dist-info"
LIBRARY_WHEEL = [
    "dbpatterns/__init__.py",
    "dbpatterns/py.typed",
    "dbpatterns/exactly_once/__init__.py",
    "dbpatterns/exactly_once/idempotent.py",
    "dbpatterns/testing/plugin.py",
    f"{DIST_INFO}/METADATA",
    f"{DIST_INFO}/licenses/LICENSE",
    f"{DIST_INFO}/entry_points.txt",
]
PLUGIN = "[pytest11]\ndbpatterns = dbpatterns.testing.plugin\n"


def test_a_wheel_of_the_library_and_its_test_kit_passes() -> None:
    assert wheel_problems(LIBRARY_WHEEL, PLUGIN) == []


def test_a_wheel_with_anything_of_the_lab_is_refused() -> None:
    lab = ["chaos/cli.py", "dbpatterns/service/app.py", "dbpatterns/config.py", "tests/x.py"]
    assert wheel_problems([*LIBRARY_WHEEL, *lab], PLUGIN) == [
        f"not the library's: {name}" for name in sorted(lab)
    ]


def test_a_wheel_without_its_type_marker_or_license_is_refused() -> None:
    names = [n for n in LIBRARY_WHEEL if not n.endswith(("py.typed", "LICENSE"))]
    assert wheel_problems(names, PLUGIN) == [
        "missing: dbpatterns/py.typed",
        "missing: the LICENSE file in .dist-info/licenses",
    ]


def test_a_wheel_that_installs_a_command_or_registers_one_is_refused() -> None:
    for extra in (
        "[console_scripts]\ndbpatterns = dbpatterns.cli:main\n",
        "[dbpatterns.commands]\nchaos = chaos.cli:main\n",
    ):
        (problem,) = wheel_problems(LIBRARY_WHEEL, PLUGIN + extra)
        assert problem.startswith("entry points "), problem


def test_the_library_readme_counts_the_packages_it_lists() -> None:
    listed = listed_installs(LIBRARY_README.read_text())
    assert {"dbpatterns", "restate-sdk", "psycopg", "psycopg-pool", "pydantic"} <= listed
    assert not {"sqlalchemy", "alembic", "granian", "hypercorn", "httpx"} & listed
    block = LIBRARY_README.read_text().split("<!-- installs -->\n", 1)[1]
    assert block.split("<!-- installs:end -->", 1)[0] == installs_block(listed)
