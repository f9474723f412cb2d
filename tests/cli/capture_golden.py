"""Write ``golden/commands-e6eb94c.json``: the commands of ``./lab`` as they were before the CLI
became a package (commit e6eb94c, ``dbpatterns/cli.py``), which ``test_commands_unchanged.py``
holds the CLI to.

Run from the project root, once, with the lab's Python: ``.venv/bin/python -m
tests.cli.capture_golden``. It extracts that commit's tree (``git archive``) into a temporary
folder, builds its parser there with nothing of this tree on the path but ``shape.py``, and
records the shape of every command, the ``--help`` each prints, the errors for no command and
an unknown one, and what ``./lab --help`` printed.

Changes made on purpose since are listed in ``CHANGED``: for those commands, the shape and
``--help`` recorded are this tree's, and the file says which and why (``changed``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

COMMIT = "e6eb94c"
#: Commands whose parser changed on purpose since ``COMMIT``, and why.
CHANGED = {
    "psql": "--help says what the command does (was psql's own help: now `psql -- --help`)",
    "restate": "--help says what the command does (was restate's own: now `restate -- --help`)",
}
HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / f"commands-{COMMIT}.json"

#: Runs inside the old tree: its ``dbpatterns.cli``, this tree's ``shape.py`` loaded by path.
PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("shape", sys.argv[1])
shape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shape)
from dbpatterns import cli
assert cli.__file__.startswith(sys.argv[2]), cli.__file__
parser = cli.parser()
sub = shape.subparsers_of(parser)
print(json.dumps({
    "shape": shape.shape(parser),
    "help": {"": shape.help_text(parser)}
    | {name: shape.help_text(p) for name, p in sub.choices.items()},
    "errors": {" ".join(argv): shape.error_text(parser, argv) for argv in ([], ["bogus"])},
}))
"""


def capture(root: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dbpatterns-golden-") as tmp:
        tree = subprocess.run(
            ["git", "-C", str(root), "archive", COMMIT], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
            tar.extractall(tmp, filter="data")
        from tests.cli.shape import COLUMNS

        env = {**os.environ, "PYTHONPATH": tmp, "COLUMNS": COLUMNS}
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(HERE / "shape.py"), tmp],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lab_help = subprocess.run(
            ["bash", str(Path(tmp) / "lab"), "--help"], capture_output=True, text=True, check=True
        ).stdout
    found: dict[str, Any] = json.loads(out)
    return {
        "commit": COMMIT,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "columns": COLUMNS,
        "lab_help": lab_help,
        "changed": CHANGED,
        **with_changes(found),
    }


def with_changes(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` with the shape and help of each command in ``CHANGED`` as this tree has them."""
    from dbpatterns.cli import parser
    from tests.cli.shape import COLUMNS, help_text, shape, subparsers_of

    os.environ["COLUMNS"] = COLUMNS
    now, sub = parser(), subparsers_of(parser())
    assert sub is not None
    shapes = {c["name"]: c for c in shape(now)["commands"]}
    for command in found["shape"]["commands"]:
        if command["name"] in CHANGED:
            command.update(shapes[command["name"]])
    for name in CHANGED:
        found["help"][name] = help_text(sub.choices[name])
    return found


def main() -> None:
    root = HERE.parent.parent
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(capture(root), indent=1) + "\n")
    print(f"wrote {GOLDEN.relative_to(root)}")


if __name__ == "__main__":
    main()
