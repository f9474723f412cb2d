"""The ``dbpatterns`` command, which ``./lab <cmd>`` runs: one module per family of commands
(``lab``: run, look at and reset the lab; ``janitor``; ``measure``: bench and its kin), and one
registry (``registry``) that builds the argparse tree from them and from the commands that
live outside the CLI's package (the chaos suite), and dispatches. The entry point is
``dbpatterns.cli:main``.
"""

from __future__ import annotations

from dbpatterns.cli.registry import main, parser

__all__ = ["main", "parser"]
