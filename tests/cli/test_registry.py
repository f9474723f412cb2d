"""The registry's protocol for commands that live outside the CLI's package (the
``[tool.dbpatterns.commands]`` table of ``pyproject.toml``): a registered ``main(argv) -> int``
gets every argument after its name untouched and its exit status is the command's; its help
line is its docstring's first line; a plugin that cannot be loaded does not break the other
commands; none replaces a command of the lab's own."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from dbpatterns.cli import main, parser, registry
from tests.cli.shape import shape

GROUP = registry.ENTRY_POINT_GROUP
RECEIVED: list[list[str]] = []


def echo(argv: list[str]) -> int:
    """say what you were given (a test's command)

    More lines of the docstring stay out of the command list.
    """
    RECEIVED.append(argv)
    return 7


def register(monkeypatch: pytest.MonkeyPatch, *entries: EntryPoint) -> None:
    monkeypatch.setattr(registry, "declared", lambda: list(entries))


@pytest.fixture(autouse=True)
def nothing_received() -> None:
    RECEIVED.clear()


def test_a_registered_command_gets_its_arguments_untouched_and_answers_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(monkeypatch, EntryPoint("echo", f"{__name__}:echo", GROUP))
    assert main(["echo", "--help", "status", "--", "-x"]) == 7
    assert RECEIVED == [["--help", "status", "--", "-x"]]


def test_a_registered_command_is_listed_after_the_labs_own_with_its_docstrings_first_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(monkeypatch, EntryPoint("echo", f"{__name__}:echo", GROUP))
    last = shape(parser())["commands"][-1]
    assert (last["name"], last["help"]) == ("echo", "say what you were given (a test's command)")
    assert [a["dest"] for a in last["parser"]["arguments"]] == ["help"]  # it parses its own
    assert RECEIVED == []  # listing it did not run it


def test_a_plugin_that_cannot_be_loaded_leaves_the_other_commands_working(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    register(monkeypatch, EntryPoint("broken", "tests.cli.no_such_module:main", GROUP))
    (broken,) = [c for c in shape(parser())["commands"] if c["name"] == "broken"]
    assert broken["help"].startswith("(cannot be loaded: ")
    assert main(["compare", "a", "b"]) == 2  # a command of the lab's own still runs
    assert "dbpatterns compare: error: not a side: 'a'" in capsys.readouterr().err


def test_a_plugin_cannot_replace_a_command_of_the_labs_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    register(monkeypatch, EntryPoint("compare", f"{__name__}:echo", GROUP))
    assert main(["compare", "a", "b"]) == 2
    assert RECEIVED == []
    assert [c["name"] for c in shape(parser())["commands"]].count("compare") == 1


def test_the_table_of_a_pyproject_declares_the_commands(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\n\n[tool.dbpatterns.commands]\n'
        f'echo = "{__name__}:echo"\nbroken = "tests.cli.no_such_module:main"\n'
    )
    assert registry.declared(pyproject) == [
        EntryPoint("echo", f"{__name__}:echo", GROUP),
        EntryPoint("broken", "tests.cli.no_such_module:main", GROUP),
    ]


def test_no_table_or_no_pyproject_declares_nothing(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n')
    assert registry.declared(pyproject) == []
    assert registry.declared(tmp_path / "missing.toml") == []
