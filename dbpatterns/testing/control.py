"""The faults a test arms at the library's fault points, and the record of each one that struck:
two files in a folder both sides know, the test's and the service processes'.

``faults.json`` maps a full point name (``<service>.<handler>.<point>``, e.g.
``orders.reserve.after-commit``) to an action and how many more times it fires. A service
process that reaches an armed point takes one firing under a file lock and writes the file back
*before* it acts, so the count survives the crash it causes: the retry, in a new process, passes.

``struck.jsonl`` gets a line per firing (point, invocation id, process id, action, time), and a
second line when a frozen process resumes: what a test asserts before it judges the outcome.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

FAULTS = "faults.json"
STRUCK = "struck.jsonl"
LOCK = "faults.lock"


class Action(enum.StrEnum):
    """What a process does at an armed point."""

    RAISE = "raise"  # a transient error: Restate retries the attempt
    KILL = "kill"  # SIGKILL itself: a crash, nothing runs after it
    FREEZE = "freeze"  # SIGSTOP itself: the attempt hangs until the test lets it go (a zombie)
    HOLD = "hold"  # wait ``seconds`` (3) there, alive: time for the test to cancel or kill


@dataclass(frozen=True)
class Fault:
    action: Action
    times: int = 1
    seconds: float = 3.0


@dataclass(frozen=True)
class Struck:
    """A fault that fired (``event`` "struck"), or a frozen process that went on ("resumed")."""

    point: str
    invocation_id: str
    pid: int
    action: str
    at: float
    event: str = "struck"
    seconds: float = 0.0  # how long a hold holds


class Control:
    """The control folder, seen from either side."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            armed: dict[str, dict[str, object]] = json.loads((self.folder / FAULTS).read_text())
        except FileNotFoundError:
            return {}
        return armed

    def _write(self, armed: dict[str, dict[str, object]]) -> None:
        staged = self.folder / (FAULTS + ".tmp")
        staged.write_text(json.dumps(armed))
        os.replace(staged, self.folder / FAULTS)

    # --- the test's side ---------------------------------------------------------------------

    def arm(self, point: str, fault: Fault) -> None:
        with self._locked():
            armed = self._read()
            armed[point] = {"action": str(fault.action), "times": fault.times, "s": fault.seconds}
            self._write(armed)

    def disarm_all(self) -> None:
        with self._locked():
            self._write({})

    def armed(self) -> dict[str, int]:
        """Firings left, by point."""
        return {point: int(str(f["times"])) for point, f in self._read().items()}

    def struck(self) -> list[Struck]:
        try:
            lines = (self.folder / STRUCK).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Struck(**json.loads(line)) for line in lines if line.endswith("}")]

    # --- the service's side ------------------------------------------------------------------

    def take(self, point: str) -> Fault | None:
        """The fault armed at ``point``, counted down (on disk) before it is returned."""
        with self._locked():
            armed = self._read()
            entry = armed.get(point)
            if entry is None or int(str(entry["times"])) <= 0:
                return None
            entry["times"] = int(str(entry["times"])) - 1
            self._write(armed)
        return Fault(Action(str(entry["action"])), 1, float(str(entry["s"])))

    def record(self, point: str, invocation_id: str, fault: Fault, event: str = "struck") -> None:
        seconds = fault.seconds if fault.action == Action.HOLD else 0.0
        line = Struck(
            point, invocation_id, os.getpid(), str(fault.action), time.time(), event, seconds
        )
        with self._locked(), open(self.folder / STRUCK, "a") as out:
            out.write(json.dumps(asdict(line)) + "\n")
