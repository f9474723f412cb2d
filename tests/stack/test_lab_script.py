"""``./lab``, the one entry point a newcomer types first: its help lists every command, and
what the lab prints points at ``./lab``, the command they have, not at ``dbpatterns``."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest

from dbpatterns import cli
from dbpatterns.config import PROJECT_ROOT


def subcommands() -> list[str]:
    parser = cli.parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


@pytest.mark.parametrize("flag", ["--help", "-h", None])
def test_lab_help_lists_every_command_and_nothing_else(flag: str | None) -> None:
    args = [str(PROJECT_ROOT / "lab")] + ([flag] if flag else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "set -euo" not in out
    listed = set(re.findall(r"^  \./lab (\w+)", out, re.MULTILINE))
    assert listed >= set(subcommands()) | {"verify"}, out


def test_what_the_lab_prints_names_lab_commands_not_the_python_entry_point() -> None:
    paths = [
        "chaos/cli.py",
        *sorted(
            str(p.relative_to(PROJECT_ROOT))
            for folder in ("cli", "stack")
            for p in (PROJECT_ROOT / "dbpatterns" / folder).glob("*.py")
        ),
    ]
    for path in paths:
        text = (PROJECT_ROOT / path).read_text()
        found = re.findall(r"[`\s]dbpatterns (?:up|status|reset|psql|chaos|restate)\b.*", text)
        assert not found, f"{path}: {found}"
