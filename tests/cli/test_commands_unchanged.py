"""``./lab`` and every command behave as they did before the CLI became a package of command
families with one registry: the same commands in the same order, each with the same options,
arguments and help, the same ``--help`` through ``./lab``, the same errors, and the passthrough
commands (``psql``, ``restate``, ``chaos``) given their arguments untouched.

The golden file (``golden/commands-e6eb94c.json``) was captured from the CLI as it was at commit
e6eb94c by ``capture_golden.py``, but for the changes made on purpose since, which it lists
(``changed``): ``psql --help`` and ``restate --help`` print what the lab's command does, where
they printed the wrapped program's help (now ``psql -- --help``). Its help texts were rendered
by the Python it names; on another Python, argparse may lay help out differently, so there the
``--help`` that ``./lab`` prints is compared with this tree's parser, which the shape tests hold
to the golden.

An option added since then on purpose is named in ``ADDED``: it must be there, everything else
of its command is held to the golden, and its command's ``--help`` is compared with this
tree's parser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dbpatterns.cli import main, parser
from dbpatterns.cli.registry import declared
from dbpatterns.config import PROJECT_ROOT, get_settings
from dbpatterns.stack import find_restate_binary
from tests.cli.shape import COLUMNS, error_text, help_text, shape, subparsers_of

GOLDEN: dict[str, Any] = json.loads(
    (Path(__file__).parent / "golden" / "commands-e6eb94c.json").read_text()
)
SAME_PYTHON = GOLDEN["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
#: Commands whose arguments belong to another program: ``--help`` is the chaos suite's own, and
#: the lab's for ``psql`` and ``restate`` (which pass on everything else).
PASSTHROUGH = {"psql", "restate", "chaos"}
PARSED = [c["name"] for c in GOLDEN["shape"]["commands"] if c["name"] != "chaos"]
LAB = str(PROJECT_ROOT / "lab")
#: Options added since e6eb94c, by command: what each is for.
ADDED = {
    "bench": {"--rtt-ms": "a round-trip time on the deployment's links (bench/README.md)"},
}


def without_added(command: dict[str, Any]) -> dict[str, Any]:
    """A command's shape less the options ``ADDED`` names for it."""
    added = ADDED.get(command["name"], {})
    parser = command["parser"]
    kept = [a for a in parser["arguments"] if not set(a["option_strings"]) & set(added)]
    return command | {"parser": parser | {"arguments": kept}}


@pytest.fixture(autouse=True)
def columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Help laid out at the width the golden file was captured at."""
    monkeypatch.setenv("COLUMNS", COLUMNS)


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LAB, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": COLUMNS},
    )


def expected_help(command: str) -> str:
    """What ``dbpatterns <command> --help`` printed at e6eb94c (``""``: the command list); this
    tree's help for a command with an option ``ADDED`` since."""
    if SAME_PYTHON and command not in ADDED:
        return str(GOLDEN["help"][command])
    p = parser()
    if command:
        sub = subparsers_of(p)
        assert sub is not None
        p = sub.choices[command]
    return help_text(p)


def test_the_commands_are_the_same_in_the_same_order() -> None:
    now = [c["name"] for c in shape(parser())["commands"]]
    assert now == [c["name"] for c in GOLDEN["shape"]["commands"]]


def test_the_top_level_parser_is_the_same() -> None:
    now, before = shape(parser()), GOLDEN["shape"]
    assert {k: v for k, v in now.items() if k != "commands"} == {
        k: v for k, v in before.items() if k != "commands"
    }


@pytest.mark.parametrize("name", [c["name"] for c in GOLDEN["shape"]["commands"]])
def test_each_command_has_the_help_line_options_and_arguments_it_had(name: str) -> None:
    (before,) = [c for c in GOLDEN["shape"]["commands"] if c["name"] == name]
    (now,) = [c for c in shape(parser())["commands"] if c["name"] == name]
    assert without_added(now) == before


@pytest.mark.parametrize("name", sorted(ADDED))
def test_each_option_added_since_is_there(name: str) -> None:
    (now,) = [c for c in shape(parser())["commands"] if c["name"] == name]
    options = {o for a in now["parser"]["arguments"] for o in a["option_strings"]}
    assert set(ADDED[name]) <= options


def test_lab_help_is_the_scripts_header_as_before() -> None:
    for args in (["--help"], ["-h"], []):
        out = lab(*args)
        assert (out.returncode, out.stdout) == (0, GOLDEN["lab_help"]), args


@pytest.mark.slow
def test_every_commands_help_through_lab_is_as_before() -> None:
    """``./lab <cmd> --help`` for every command argparse parses. Each run installs what is
    missing first, as ``./lab`` always does (and may say so on stderr): the first runs alone,
    so that two never install at once."""
    first, *rest = PARSED
    outs = {first: lab(first, "--help")}
    with ThreadPoolExecutor(4) as pool:
        outs |= dict(zip(rest, pool.map(lambda name: lab(name, "--help"), rest), strict=True))
    for name, out in outs.items():
        assert (out.returncode, out.stdout) == (0, expected_help(name)), f"{name}: {out.stderr}"


def expected_error(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``dbpatterns <argv>`` refused, at e6eb94c."""
    if SAME_PYTHON:
        code, err = GOLDEN["errors"][" ".join(argv)]
        return int(code), str(err)
    return error_text(parser(), argv)


def test_the_command_list_and_its_errors_are_as_before() -> None:
    cli = [sys.executable, "-m", "dbpatterns.cli"]
    env = {**os.environ, "COLUMNS": COLUMNS}
    listed = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert (listed.returncode, listed.stdout) == (0, expected_help(""))
    for argv in ([], ["bogus"]):
        out = subprocess.run([*cli, *argv], capture_output=True, text=True, env=env, timeout=120)
        code, err = expected_error(argv)
        assert (out.returncode, out.stdout, out.stderr) == (code, "", err), argv


def test_an_unknown_command_through_lab_is_refused_as_before() -> None:
    code, err = expected_error(["bogus"])
    out = lab("bogus")
    # ./lab may first say on stderr what it installs; the refusal is what ends it.
    assert out.returncode == code
    assert out.stderr.endswith(err), out.stderr


@pytest.fixture
def psql_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines ``psql`` would be run with (``os.execv`` recorded, not run)."""
    ran: list[list[str]] = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/bin/{name}")
    monkeypatch.setattr(os, "execv", lambda path, argv: ran.append(list(argv)))
    return ran


@pytest.fixture
def restate_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str]]:
    """The command lines the restate CLI would be run with, and its RESTATE_ADMIN_URL."""
    ran: list[tuple[list[str], str]] = []
    monkeypatch.setattr(
        os, "execve", lambda path, argv, env: ran.append((list(argv), env["RESTATE_ADMIN_URL"]))
    )
    return ran


def test_psql_gets_its_arguments_untouched(psql_runs: list[list[str]]) -> None:
    main(["psql", "-c", "SELECT 1", "--help", "--", "-x", "-h", "otherhost"])
    url = get_settings().libpq_url
    assert psql_runs == [
        ["/bin/psql", url, "-c", "SELECT 1", "--help", "--", "-x", "-h", "otherhost"]
    ]


def test_restate_gets_its_arguments_untouched_aimed_at_the_admin_api(
    restate_runs: list[tuple[list[str], str]],
) -> None:
    main(["restate", "invocations", "list", "--json", "--help"])
    main(["restate", "-h"])
    binary = str(find_restate_binary("restate", "restate"))
    admin = get_settings().admin_url
    assert restate_runs == [
        ([binary, "invocations", "list", "--json", "--help"], admin),
        ([binary, "-h"], admin),
    ]


@pytest.mark.parametrize(("command", "program_help"), [("psql", "psql"), ("restate", "restate")])
def test_a_first_help_says_what_the_lab_command_does_and_runs_nothing(
    command: str,
    program_help: str,
    psql_runs: list[list[str]],
    restate_runs: list[tuple[list[str], str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    said = capsys.readouterr().out
    assert said == expected_help(command)
    assert f"./lab {command} -- --help" in said  # how to reach the program's own help
    assert ("DBPATTERNS_DATABASE_URL" if command == "psql" else "RESTATE_ADMIN_URL") in said
    assert (psql_runs, restate_runs) == ([], [])


def test_a_first_double_dash_is_dropped_and_the_rest_goes_to_the_program(
    psql_runs: list[list[str]], restate_runs: list[tuple[list[str], str]]
) -> None:
    main(["psql", "--", "--help"])
    main(["restate", "--", "--help", "--", "x"])
    assert psql_runs == [["/bin/psql", get_settings().libpq_url, "--help"]]
    binary = str(find_restate_binary("restate", "restate"))
    assert restate_runs == [([binary, "--help", "--", "x"], get_settings().admin_url)]


@pytest.mark.slow
def test_psql_and_restate_through_lab_are_those_programs() -> None:
    psql = shutil.which("psql")
    assert psql is not None
    assert (
        lab("psql", "--version").stdout
        == subprocess.run([psql, "--version"], capture_output=True, text=True, check=True).stdout
    )
    restate = str(find_restate_binary("restate", "restate"))
    assert (
        lab("restate", "--version").stdout
        == subprocess.run([restate, "--version"], capture_output=True, text=True, check=True).stdout
    )
    assert (
        lab("restate", "--", "--help").stdout
        == subprocess.run([restate, "--help"], capture_output=True, text=True, check=True).stdout
    )


def test_chaos_is_a_registered_command_not_an_import() -> None:
    (chaos,) = [entry for entry in declared() if entry.name == "chaos"]
    assert chaos.value == "chaos.cli:main"


@pytest.mark.slow
def test_lab_chaos_is_the_chaos_suites_own_command_line() -> None:
    """``./lab chaos --help`` prints what the suite's ``main(["--help"])`` prints: every
    argument after ``chaos`` reaches it untouched."""
    own = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from chaos.cli import main; sys.exit(main(['--help']))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": COLUMNS},
    )
    through_lab = lab("chaos", "--help")
    assert (through_lab.returncode, through_lab.stdout) == (own.returncode, own.stdout)
    assert own.returncode == 0, own.stderr
    assert "--profile" in own.stdout
