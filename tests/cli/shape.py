"""The shape of an argparse command line, as JSON: every command, in order, with its help line,
and each option and argument with its flags, metavar, choices, default, type and help. Two
parsers of the same shape print the same ``--help`` and accept the same arguments.

This module imports nothing of the project, so ``capture_golden.py`` can load it beside the
CLI of an older commit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

#: The terminal width every help text in the golden file is rendered at (``COLUMNS``).
COLUMNS = "100"


def value(v: Any) -> Any:
    """A default or a choice as JSON: JSON's own types as they are, anything else as its repr."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple):
        return [value(x) for x in v]
    return {"repr": repr(v)}


def argument(action: argparse.Action) -> dict[str, Any]:
    return {
        "kind": type(action).__name__,
        "option_strings": list(action.option_strings),
        "dest": action.dest,
        "nargs": action.nargs,
        "metavar": value(action.metavar),
        "choices": None if action.choices is None else value(list(action.choices)),
        "default": value(action.default),
        "type": getattr(
            action.type, "__name__", None if action.type is None else repr(action.type)
        ),
        "required": action.required,
        "help": action.help,
    }


def subparsers_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return found[0] if found else None


def shape(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The parser's own settings and arguments, and each subcommand's shape, in order."""
    sub = subparsers_of(parser)
    lines = {a.dest: a.help for a in sub._choices_actions} if sub is not None else {}
    return {
        "prog": parser.prog,
        "usage": parser.usage,
        "description": parser.description,
        "epilog": parser.epilog,
        "formatter_class": getattr(parser.formatter_class, "__name__", None),
        "add_help": parser.add_help,
        "groups": [g.title for g in parser._action_groups],
        "exclusive_groups": len(parser._mutually_exclusive_groups),
        "arguments": [argument(a) for a in parser._actions if a is not sub],
        "commands_dest": None if sub is None else sub.dest,
        "commands_required": None if sub is None else sub.required,
        "commands": [
            {"name": name, "help": lines.get(name), "parser": shape(p)}
            for name, p in (sub.choices.items() if sub is not None else [])
        ],
    }


def help_text(parser: argparse.ArgumentParser) -> str:
    """What ``--help`` prints (at the width of the current ``COLUMNS``)."""
    return parser.format_help()


def error_text(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[int, str]:
    """What the parser prints on stderr, and its exit status, for ``argv`` it refuses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0), err.getvalue()
    raise AssertionError(f"{argv} was accepted")
