"""Write ``golden/commands-e6eb94c.json``: the commands of ``./lab`` as they were before the CLI
became a package (commit e6eb94c, ``dbpatterns/cli.py``), which ``test_commands_unchanged.py``
holds the CLI to.

Run from the project root, once, with the lab's Python: ``.venv/bin/python -m
tests.cli.capture_golden``. It extracts that commit's tree (``git archive``) into a temporary
folder, builds its parser there with nothing of this tree on the path but ``shape.py``, and
records the shape of every command, the ``--help`` each prints, the errors for no command and
an unknown one, and what ``./lab --help`` printed.
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

COMMIT = "e6eb94c"
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
    found: dict[str, object] = json.loads(out)
    return {
        "commit": COMMIT,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "columns": COLUMNS,
        "lab_help": lab_help,
        **found,
    }


def main() -> None:
    root = HERE.parent.parent
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(capture(root), indent=1) + "\n")
    print(f"wrote {GOLDEN.relative_to(root)}")


if __name__ == "__main__":
    main()
