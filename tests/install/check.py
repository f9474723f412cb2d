"""The published package as a user gets it: the wheel built from this checkout, installed
outside the repository into a fresh virtual environment, its requirements from PyPI.

Each ``Stage`` makes its own venv (``python -m venv`` in a temporary folder, with the pip that
comes with it), installs the wheel with the stage's extras, prints what pip installed, and runs
its commands in a folder of its own beside the venv, with the venv first on ``PATH`` and nothing
of the checkout on ``sys.path``. Tools a stage needs only for its checks (mypy) are installed
after the package list is taken, so the list is the user's install.

The stages (``stages()``):

* ``library alone``: no extra. Imports the library from the venv (its tables' DDL works, their
  SQLAlchemy form asks for its extra), and type-checks the root README's example service with ``mypy
  --strict`` against the installed ``py.typed``; a control file with a wrong call must fail
  there, or the check proves nothing. pytest (with no extra) loads the test kit's plugin. The
  packages it installed must be the ones the library's README lists between ``<!-- installs
  -->`` and ``<!-- installs:end -->``.
* ``test kit``: the ``testing`` extra. The root README's test file for its example service
  (section "Prove it in your own tests"), beside that service, run by pytest as a user runs it:
  the kit starts Postgres and restate-server (the lab's pinned binary, as the README has a user
  install it) and strikes each fault it tests.

Before any stage the wheel itself is checked: it holds the library and nothing else of the
repository, its license, and no entry point but the test kit's pytest plugin; building it left
nothing in the checkout.

``./lab verify`` runs it before pytest; alone: ``.venv/bin/python -m tests.install.check``
(``--stage NAME`` for one stage, ``--keep`` to leave the temporary folder for a look).
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.readme_code import readme_example, readme_example_test

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_README = ROOT / "dbpatterns" / "exactly_once" / "README.md"
#: What the wheel may hold besides its ``.dist-info``: the library and its test kit.
LIBRARY = (
    "dbpatterns/__init__.py",
    "dbpatterns/py.typed",
    "dbpatterns/exactly_once/",
    "dbpatterns/testing/",
)
#: What it must hold among them.
REQUIRED = ("dbpatterns/py.typed", "dbpatterns/exactly_once/__init__.py")
#: The only entry points the wheel may declare: the test kit, as a pytest plugin.
ENTRY_POINTS = {"pytest11": {"dbpatterns": "dbpatterns.testing.plugin"}}
#: What a build backend may leave in a checkout.
BUILD_LEFTOVERS = re.compile(r"^(build|dist|.*\.egg-info)$")
INSTALLS = re.compile(r"<!-- installs -->\n(.*?)<!-- installs:end -->", re.S)
#: Long enough for pip on a loaded machine and a slow network; only a hang reaches it.
PATIENCE_S = 900

#: Imports the library as the user's service does, from the venv; the tables' DDL needs
#: nothing more, and the SQLAlchemy tables, which need the extra, must say which.
IMPORT_CHECK = """
import sys
import dbpatterns.exactly_once as library
from dbpatterns.exactly_once import schema
assert library.__file__.startswith(sys.prefix), f"imported from {library.__file__}"
print(f"imported {library.__name__} from {library.__file__}")
assert "CREATE TABLE exactly_once_tokens" in schema.ddl()
try:
    schema.token_table(None)
except ModuleNotFoundError as missing:
    assert "dbpatterns[schema]" in str(missing), missing
    print(f"schema's tables without its extra: {missing}")
else:
    raise AssertionError("schema.token_table ran without SQLAlchemy")
"""
#: A call that does not fit the library's types: mypy must refuse it, or it checks nothing.
CONTROL = """
from dbpatterns.exactly_once import Retry

Retry(max_attempts="three")
"""
#: The test kit's pytest plugin is registered whatever the extras (entry points have no extra):
#: pytest in a service's venv loads it, so it must load without the ``testing`` extra too.
PLUGIN_LOADS = """
import pytest


def test_the_kit_plugin_loads_without_its_extra(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("dbpatterns")
"""


@dataclass(frozen=True)
class Command:
    """A command a stage runs in its folder (``python`` is the venv's), and what it shows; it
    must exit 0, or, with ``fails_with``, exit non-zero and print that."""

    what: str
    argv: tuple[str, ...]
    fails_with: str | None = None


@dataclass(frozen=True)
class Stage:
    """One fresh venv: the wheel with ``extras``, then ``tools`` (for the checks only), the
    ``files`` written into the stage's folder, and the ``commands`` run there with ``env``
    added to the environment."""

    name: str
    extras: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    commands: tuple[Command, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: The packages the install must come to (names as PyPI normalizes them), if it is checked.
    expect_installs: frozenset[str] | None = None


def stages() -> list[Stage]:
    """Every stage, in the order they run."""
    # The lab's own versions of the tools, so pip's cache has them.
    mypy, pytest = (f"{tool}=={importlib.metadata.version(tool)}" for tool in ("mypy", "pytest"))
    return [
        Stage(
            name="library alone",
            tools=(mypy, pytest),
            files={
                "orders_app.py": readme_example(),
                "control.py": CONTROL,
                "test_plugin.py": PLUGIN_LOADS,
            },
            commands=(
                Command("the library imports from the venv", ("python", "-c", IMPORT_CHECK)),
                Command(
                    "mypy --strict on the README's example service",
                    ("python", "-m", "mypy", "--strict", "orders_app.py"),
                ),
                Command(
                    "mypy --strict refuses a call that does not fit (the control)",
                    ("python", "-m", "mypy", "--strict", "control.py"),
                    fails_with="[arg-type]",
                ),
                Command(
                    "pytest loads the test kit's plugin without the testing extra",
                    ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"),
                ),
            ),
            expect_installs=listed_installs(LIBRARY_README.read_text()),
        ),
        Stage(
            name="test kit",
            extras=("testing",),
            files={"orders_app.py": readme_example(), "test_orders.py": readme_example_test()},
            commands=(
                Command(
                    "the README's test file proves its example service with the test kit",
                    ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_orders.py"),
                ),
            ),
            # The restate-server binary the README tells a user to install (npm), from the
            # lab's node_modules; Postgres from the machine, as the kit looks for it.
            env={"DBPATTERNS_RESTATE_SERVER": str(restate_server_binary())},
        ),
    ]


def restate_server_binary() -> Path:
    """The pinned restate-server of the lab's ``node_modules``."""
    found = sorted(
        (ROOT / "node_modules" / "@restatedev").glob("restate-server-*/bin/restate-server")
    )
    assert found, "no restate-server in node_modules: ./lab installs it (npm ci)"
    return found[0]


def say(message: str) -> None:
    print(f"[install check] {message}", flush=True)


def normalized(name: str) -> str:
    """A package name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installs_block(names: Iterable[str]) -> str:
    """The line the library's README keeps between its ``installs`` markers."""
    found = sorted({normalized(n) for n in names})
    listed = ", ".join(f"`{n}`" for n in found)
    return f"{len(found)} packages, `dbpatterns` included: {listed}.\n"


def listed_installs(readme: str) -> frozenset[str]:
    """The packages the README's ``installs`` block names."""
    match = INSTALLS.search(readme)
    assert match, "the library's README has no <!-- installs --> block"
    return frozenset(re.findall(r"`([^`]+)`", match.group(1)))


def wheel_problems(names: Iterable[str], entry_points: str | None) -> list[str]:
    """What is wrong with a wheel of these file names and this ``entry_points.txt``."""
    names = list(names)
    problems = [
        f"not the library's: {n}"
        for n in sorted(names)
        if not n.startswith(LIBRARY) and not re.match(r"dbpatterns-[^/]+\.dist-info/", n)
    ]
    problems += [f"missing: {n}" for n in REQUIRED if n not in names]
    if not any(re.match(r"dbpatterns-[^/]+\.dist-info/licenses/LICENSE$", n) for n in names):
        problems.append("missing: the LICENSE file in .dist-info/licenses")
    declared: dict[str, dict[str, str]] = {}
    if entry_points is not None:
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.read_string(entry_points)
        declared = {group: dict(parser[group]) for group in parser.sections()}
    if declared != ENTRY_POINTS:
        problems.append(f"entry points {declared}, not {ENTRY_POINTS}")
    return problems


def leftovers(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if BUILD_LEFTOVERS.match(p.name)}


def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """Run ``argv``, its output on the terminal; a non-zero exit ends the check."""
    done = subprocess.run(list(argv), cwd=cwd, env=env, timeout=PATIENCE_S, check=False)
    if done.returncode != 0:
        raise SystemExit(f"[install check] failed ({done.returncode}): {' '.join(argv)}")


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout, checked; the build must leave nothing in the checkout."""
    before = leftovers(ROOT)
    out.mkdir(parents=True)
    say(f"building the wheel of {ROOT}")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        cwd=out,
    )
    left = leftovers(ROOT) - before
    (wheel,) = out.glob("dbpatterns-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(points[0]).decode() if points else None
    problems = wheel_problems(names, entry_points)
    problems += [f"the build left {name} in the checkout" for name in sorted(left)]
    if problems:
        raise SystemExit("[install check] the wheel is wrong:\n  " + "\n  ".join(problems))
    say(f"{wheel.name}: {len(names)} files, the library's only")
    return wheel


def venv_env(venv: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """This environment with the venv activated and nothing pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "MYPYPATH")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"  # the venv's own pip, as it came: no notice
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return {**env, **extra}


def installed(python: Path, env: Mapping[str, str]) -> set[str]:
    """The packages in the venv of ``python``, by normalized name."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=PATIENCE_S,
        check=True,
    ).stdout
    return {normalized(p["name"]) for p in json.loads(listed)}


def run_stage(stage: Stage, wheel: Path, folder: Path) -> None:
    started = time.monotonic()
    venv, work = folder / "venv", folder / "work"
    work.mkdir(parents=True)
    say(f"stage {stage.name!r}: a fresh venv in {venv}")
    run([sys.executable, "-m", "venv", str(venv)], cwd=folder)
    python = venv / "bin" / "python"
    env = venv_env(venv, stage.env)
    before = installed(python, env)
    extras = f"[{','.join(stage.extras)}]" if stage.extras else ""
    say(f"pip install {wheel.name}{extras}")
    run([str(python), "-m", "pip", "install", "-q", f"{wheel}{extras}"], cwd=work, env=env)
    say("pip list:")
    run([str(python), "-m", "pip", "list"], cwd=work, env=env)
    brought = sorted(installed(python, env) - before)
    say(f"the install brought {len(brought)} packages: {', '.join(brought)}")
    if stage.expect_installs is not None and set(brought) != stage.expect_installs:
        raise SystemExit(
            f"[install check] the install brought {brought}, the library's README lists "
            f"{sorted(stage.expect_installs)}: if the change is meant, put this between the "
            f"markers in {LIBRARY_README.relative_to(ROOT)}:\n{installs_block(brought)}"
        )
    if stage.tools:
        say(f"for the checks: pip install {' '.join(stage.tools)}")
        run([str(python), "-m", "pip", "install", "-q", *stage.tools], cwd=work, env=env)
    for name, text in stage.files.items():
        (work / name).write_text(text)
    for command in stage.commands:
        say(command.what)
        if command.fails_with is None:
            run(command.argv, cwd=work, env=env)
            continue
        done = subprocess.run(
            command.argv, cwd=work, env=env, capture_output=True, text=True, timeout=PATIENCE_S
        )
        print(done.stdout + done.stderr, end="", flush=True)
        if done.returncode == 0 or command.fails_with not in done.stdout + done.stderr:
            raise SystemExit(f"[install check] expected to fail with {command.fails_with}")
        say(f"failed as it must ({command.fails_with})")
    say(f"stage {stage.name!r} passed in {time.monotonic() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.install.check", description=__doc__)
    parser.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    chosen = [s for s in stages() if not args.stage or s.name in args.stage]
    if not chosen:
        parser.error(f"no stage named {args.stage}: {[s.name for s in stages()]}")
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="dbpatterns-install-"))
    try:
        wheel = build_wheel(folder / "dist")
        for index, stage in enumerate(chosen):
            run_stage(stage, wheel, folder / f"stage-{index + 1}")
    finally:
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    say(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
