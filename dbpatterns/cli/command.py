"""A command of the lab's own, as its family's module declares it for the registry
(``dbpatterns.cli.registry``): its name and help line, the options it adds to its parser, and
what runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from dbpatterns.config import Settings

Run = Callable[[Settings, argparse.Namespace], int]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that takes no options."""


@dataclass(frozen=True)
class Passthrough:
    """The arguments after the command's name belong to another program (``psql -c ...``):
    they go on untouched, as the list ``args.<dest>``, but for a first ``--help``, which prints
    ``description`` (what the command does, and how to reach the program's own help), and a
    first ``--``, which is dropped (``./lab psql -- --help`` is psql's ``--help``)."""

    dest: str
    help: str
    description: str

    def takes(self, argv: list[str]) -> list[str] | None:
        """The program's arguments, from those after the command's name; None: ``--help``."""
        if argv[:1] == ["--help"]:
            return None
        return argv[1:] if argv[:1] == ["--"] else argv


@dataclass(frozen=True)
class Command:
    """One of the lab's own commands: its name and help line, the options it adds to its
    parser, and what runs it."""

    name: str
    help: str
    run: Run
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
    passthrough: Passthrough | None = None
    #: Its settings follow the lab that runs in the working folder (one server or a cluster,
    #: from the state file) unless ``DBPATTERNS_RESTATE_NODES`` says otherwise; ``up``, which
    #: starts that lab, takes them as they are.
    follows_running_lab: bool = True

    def add_to(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        if self.passthrough is None:
            parser = sub.add_parser(self.name, help=self.help)
            self.arguments(parser)
            return
        # Only --help is the lab's: -h goes to the program (psql's host, restate's short help).
        parser = sub.add_parser(
            self.name,
            help=self.help,
            description=self.passthrough.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=False,
        )
        parser.add_argument("--help", action="help", help="show this help message and exit")
        self.arguments(parser)
        parser.add_argument(
            self.passthrough.dest, nargs=argparse.REMAINDER, help=self.passthrough.help
        )
