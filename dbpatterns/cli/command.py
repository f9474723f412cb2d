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
    they go on untouched, as the list ``args.<dest>``, ``--help`` included."""

    dest: str
    help: str


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
        parser = sub.add_parser(self.name, help=self.help)
        self.arguments(parser)
        if self.passthrough is not None:
            parser.add_argument(
                self.passthrough.dest, nargs=argparse.REMAINDER, help=self.passthrough.help
            )
