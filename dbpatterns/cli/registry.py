"""The one registry of ``dbpatterns`` commands (what ``./lab <cmd>`` runs): it builds the
argparse tree from them and dispatches a command line to one.

Two kinds of command:

* The lab's own (``Command``), one module per family: ``cli.lab`` (run, look at and reset the
  lab), ``cli.janitor``, ``cli.measure`` (bench and its kin). Each runs as
  ``run(settings, args) -> exit status``; a ``LabError`` it raises is printed as
  ``dbpatterns <cmd>: error: ...`` with exit status 2.
* A command that lives outside the CLI's package: a line ``name = "module:main"`` of the
  ``[tool.dbpatterns.commands]`` table in the repository's ``pyproject.toml``, where
  ``main(argv: list[str]) -> int`` takes every argument after the command's name untouched and
  parses its own. Its help line is the first line of ``main``'s docstring. The chaos suite is
  registered so: the lab's CLI does not import it. A line that takes a name of the lab's own is
  left out. (The table is the repository's, not package metadata: the published package is the
  library alone, and the lab runs from a clone.)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, cast

from dbpatterns.cli.command import Command
from dbpatterns.cli.janitor import COMMANDS as JANITOR_COMMANDS
from dbpatterns.cli.lab import COMMANDS as LAB_COMMANDS
from dbpatterns.cli.measure import COMMANDS as MEASURE_COMMANDS
from dbpatterns.config import PROJECT_ROOT, get_settings
from dbpatterns.stack import LabError, shaped_like_running_lab

DESCRIPTION = "The ``dbpatterns`` command: run the lab, look at it, reset it."
#: Where the commands that live outside the CLI's package are named, ``name = "module:main"``.
PYPROJECT = PROJECT_ROOT / "pyproject.toml"
TABLE = ("tool", "dbpatterns", "commands")
#: The group of the entry points ``declared`` makes of the table's lines.
ENTRY_POINT_GROUP = "dbpatterns.commands"
#: The order ``dbpatterns --help`` has always listed the commands in (and an unknown command's
#: error names them in); a command not named here comes after these, by name.
ORDER = (
    "up",
    "status",
    "psql",
    "reset",
    "migrate",
    "janitor",
    "bench",
    "profile",
    "compare",
    "costs",
    "frames",
    "chaos",
    "keygen",
    "node",
    "restate",
)

Main = Callable[[list[str]], int]


def own_commands() -> list[Command]:
    """Every command of the lab's own, from each family's module."""
    return [*LAB_COMMANDS, *JANITOR_COMMANDS, *MEASURE_COMMANDS]


def declared(pyproject: Path | None = None) -> list[EntryPoint]:
    """The ``[tool.dbpatterns.commands]`` table of ``pyproject`` (the repository's by default),
    each line as an entry point of ``ENTRY_POINT_GROUP``; none when there is no such file or
    table."""
    try:
        table: Any = tomllib.loads((pyproject or PYPROJECT).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    for key in TABLE:
        table = table.get(key, {}) if isinstance(table, dict) else {}
    return [EntryPoint(name, str(value), ENTRY_POINT_GROUP) for name, value in table.items()]


def registered() -> dict[str, EntryPoint]:
    """The commands declared outside the CLI's package (``declared``), by name; none takes a
    name of the lab's own."""
    own = {c.name for c in own_commands()}
    return {entry.name: entry for entry in declared() if entry.name not in own}


def help_line(entry: EntryPoint) -> str:
    """The first line of the registered callable's docstring. Read from its module's source when
    it is a function defined there, so listing the commands does not import every plugin (the
    chaos suite takes seconds to import); imported otherwise."""
    module, _, attr = entry.value.partition(":")
    doc: str | None = None
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as source:
                tree = ast.parse(source.read())
            defs = [
                node
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == attr
            ]
            doc = ast.get_docstring(defs[-1]) if defs else inspect.getdoc(entry.load())
        else:
            doc = inspect.getdoc(entry.load())
    except Exception as exc:  # a broken plugin must not break the other commands' help
        return f"(cannot be loaded: {exc})"
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def ordered(names: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(ORDER)), name))


def parser() -> argparse.ArgumentParser:
    """The argparse tree: every command, the lab's own and the registered ones, in ``ORDER``."""
    p = argparse.ArgumentParser(prog="dbpatterns", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    own = {c.name: c for c in own_commands()}
    others = registered()
    for name in ordered([*own, *others]):
        if name in own:
            own[name].add_to(sub)
        else:
            sub.add_parser(name, help=help_line(others[name]))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = {c.name: c for c in own_commands()}
    if argv and argv[0] not in own:
        entry = registered().get(argv[0])
        if entry is not None:  # it parses its own options: the rest goes on untouched
            return cast(Main, entry.load())(argv[1:])
    command = own.get(argv[0]) if argv else None
    passthrough = command.passthrough if command is not None else None
    passed_on = passthrough.takes(argv[1:]) if passthrough is not None else None
    if command is not None and passthrough is not None and passed_on is not None:
        args = argparse.Namespace(command=argv[0], **{passthrough.dest: passed_on})
    else:  # the lab's own commands, and the lab's --help of a passthrough command
        args = parser().parse_args(argv)
        command = own[args.command]
    settings = get_settings()
    if command.follows_running_lab:  # they look at the lab that runs, one server or a cluster
        explicit = "DBPATTERNS_RESTATE_NODES" in os.environ
        settings = shaped_like_running_lab(settings, explicit)
    try:
        return command.run(settings, args)
    except LabError as exc:
        print(f"dbpatterns {args.command}: error: {exc}", file=sys.stderr)
        return 2
