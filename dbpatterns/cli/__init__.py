"""The ``dbpatterns`` command, which ``./lab <cmd>`` runs: one module per family of commands
(``lab``: run, look at and reset the lab; ``janitor``; ``measure``: bench and its kin), and one
registry (``registry``) that builds the argparse tree from them and from the commands that
live outside the CLI's package (the chaos suite), and dispatches. It runs from a clone as
``python -m dbpatterns.cli`` (what ``./lab <cmd>`` does): the published package is the library
alone and installs no command.
"""

from __future__ import annotations

from dbpatterns.cli.registry import main, parser

__all__ = ["main", "parser"]
