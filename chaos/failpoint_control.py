"""The failpoint control file of the chaos stack: what each failpoint of the services does now.

Both service processes read one file (``DBPATTERNS_FAILPOINTS_FILE``; the grammar is
``dbpatterns.service.failpoints``'s); the harness switches points on and off by rewriting it, and
reads back how many times a counted action has left to fire, which is how a cell proves that
its failpoint was reached.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dbpatterns.patterns  # noqa: F401  (declares every failpoint: fills the catalogue)
from dbpatterns.service import failpoints
from dbpatterns.stack import LabError


class FailpointControl:
    """The control file every service process of the harness reads (``DBPATTERNS_FAILPOINTS_FILE``).

    Writes take the same lock the services take when they consume a count, so the harness and a
    firing failpoint never overwrite each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._serial = 0
        path.write_text("")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield f

    def set(self, actions: dict[str, str]) -> None:
        """Replace every setting with ``actions`` ({failpoint: action}); validated first."""
        parsed = {name: failpoints.Action.parse(action) for name, action in actions.items()}
        unknown = sorted(set(parsed) - set(failpoints.CATALOGUE))
        if unknown:
            raise LabError(
                f"unknown failpoint(s): {', '.join(unknown)}",
                "the pattern code declares its failpoints; see chaos/README.md for the list",
            )
        self._serial += 1
        text = f"# chaos setting {self._serial}\n" + failpoints.format_spec(parsed)
        with self._locked() as f:
            f.seek(0)
            f.truncate()
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        self.set({})

    def current(self) -> dict[str, failpoints.Action]:
        with self._locked() as f:
            return failpoints.parse_spec(f.read())

    def remaining(self, name: str) -> int | None:
        """How many more times a counted action fires (0 once spent); None if not counted."""
        action = self.current().get(name)
        if action is None or action.verb == "off":
            return 0
        return action.count
