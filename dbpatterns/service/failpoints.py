"""Named fault points in the handler code: no-ops unless switched on.

A failpoint marks a moment that matters, e.g. ``keyed.update.after-commit``: the database
transaction has committed but Restate has not yet recorded the step. The chaos harness switches
points on for a service process and provokes the work; the handler then crashes, pauses or fails
exactly there.

Switching on, in the spirit of fail-rs and gofail (both read through ``dbpatterns.config``):

* ``DBPATTERNS_FAILPOINTS="name=action;name=action"`` in the service's environment, or
* ``DBPATTERNS_FAILPOINTS_FILE=/path``: a file with one ``name=action`` per line, re-read
  whenever it changes, so a running process can be switched without a restart.

The service checks both when it starts (``check_settings``): an unknown failpoint or a bad
action refuses the start, naming the entry, instead of failing every handler at its first hit.
The catalogue of names is documented in ``chaos/README.md``.

Actions (``[count*]`` or ``[percent%]`` may prefix any of them):

* ``off``            do nothing
* ``kill``           SIGKILL this process (a crash: nothing runs after it)
* ``pause``          SIGSTOP this process (a zombie until someone sends SIGCONT)
* ``error``          raise ``FailpointError``, a transient error Restate retries
* ``sleep(MS)``      sleep MS milliseconds

``1*kill`` fires once. The count lives in the control file and is decremented there *before*
the action runs, so it survives the crash it causes: the retry, in a restarted process, passes.
A counted action that has fired its count reads ``off`` in the control file: ``spent`` tells a
test that its fault really happened.

Every hit is logged at WARNING with the process id and the invocation id.
"""

from __future__ import annotations

import asyncio
import difflib
import fcntl
import logging
import os
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from dbpatterns.config import Settings, get_settings
from dbpatterns.exactly_once import faults

log = logging.getLogger("dbpatterns.service.failpoints")

ENV_SPEC = "DBPATTERNS_FAILPOINTS"
ENV_FILE = "DBPATTERNS_FAILPOINTS_FILE"
#: Where the catalogue is documented (generated from ``CATALOGUE``).
CATALOGUE_DOC = "chaos/README.md"

#: Every failpoint, by name: where it is and what a fault there tests.
CATALOGUE: dict[str, str] = {}


def declare(name: str, where: str, tests: str) -> str:
    """Add a failpoint to the catalogue; returns its name, for use at the call site."""
    if name in CATALOGUE:
        raise ValueError(f"failpoint {name!r} declared twice")
    CATALOGUE[name] = f"{where} -- {tests}"
    return name


def declare_library_points(handler: str, points: dict[str, str]) -> None:
    """Add the fault points of a ``dbpatterns.exactly_once`` pattern, as ``handler`` (for
    example ``idempotency.update``) reaches them, to the catalogue."""
    for point, tests in points.items():
        declare(f"{handler}.{point}", handler, tests)


def install_library_hook(settings: Settings | None = None) -> bool:
    """Route the library's fault points through ``hit``, if any failpoint setting is given.

    The library (``dbpatterns.exactly_once.faults``) has no fault points of its own making: a
    service that never calls this, as a user's service does not, runs them as a single
    ``is None`` test. Returns whether the hook is installed.
    """
    settings = settings or get_settings()
    enabled = bool(settings.failpoints) or settings.failpoints_file is not None
    faults.install(hit if enabled else None)
    return enabled


class FailpointError(Exception):
    """A transient fault injected by a failpoint; Restate retries the step or invocation."""


class FailpointSpecError(ValueError):
    """A failpoint setting that names no declared failpoint or has a bad action."""


_ACTION = re.compile(
    r"^\s*(?:(?P<count>\d+)\*|(?P<percent>\d+(?:\.\d+)?)%)?"
    r"(?P<verb>off|kill|pause|error|sleep)(?:\((?P<arg>\d+)\))?\s*$"
)


@dataclass(frozen=True)
class Action:
    verb: str
    count: int | None = None  # None: every time
    percent: float | None = None
    arg: int | None = None

    @classmethod
    def parse(cls, text: str) -> Action:
        m = _ACTION.match(text)
        if not m or (m["verb"] == "sleep") != (m["arg"] is not None):
            raise FailpointSpecError(
                f"bad failpoint action {text!r}: expected [N*|P%](off|kill|pause|error|sleep(MS))"
            )
        return cls(
            verb=m["verb"],
            count=int(m["count"]) if m["count"] else None,
            percent=float(m["percent"]) if m["percent"] else None,
            arg=int(m["arg"]) if m["arg"] else None,
        )

    def __str__(self) -> str:
        prefix = f"{self.count}*" if self.count is not None else ""
        prefix = f"{self.percent:g}%" if self.percent is not None else prefix
        return prefix + self.verb + (f"({self.arg})" if self.arg is not None else "")


def parse_spec(spec: str) -> dict[str, Action]:
    """``"a=1*kill;b=pause"`` (or one per line) -> {name: Action}.

    Raises ``FailpointSpecError`` naming the bad entry: no ``=``, a bad action, or (once the
    pattern modules have declared theirs) a name that is not in the catalogue.
    """
    actions: dict[str, Action] = {}
    for item in re.split(r"[;\n]", spec):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, action = item.partition("=")
        name = name.strip()
        if not sep:
            raise FailpointSpecError(f"bad failpoint setting {item!r}: expected name=action")
        if CATALOGUE and name not in CATALOGUE:
            close = difflib.get_close_matches(name, CATALOGUE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FailpointSpecError(
                f"unknown failpoint {name!r} in {item!r}{hint}; the failpoints are listed in "
                f"{CATALOGUE_DOC}"
            )
        try:
            actions[name] = Action.parse(action)
        except FailpointSpecError as exc:
            raise FailpointSpecError(f"{exc} in {item!r}") from None
    return actions


def check_settings(settings: Settings | None = None) -> None:
    """Parse the failpoint settings against the catalogue, as the service does when it starts:
    ``DBPATTERNS_FAILPOINTS`` and the control file's current content (a missing file is fine:
    every point is off). Raises ``FailpointSpecError`` naming the setting and the bad entry."""
    if not CATALOGUE:
        raise RuntimeError("no failpoint is declared yet: import dbpatterns.patterns first")
    settings = settings or get_settings()
    try:
        parse_spec(settings.failpoints)
    except FailpointSpecError as exc:
        raise FailpointSpecError(f"{ENV_SPEC}: {exc}") from None
    file = settings.failpoints_file
    if file is None:
        return
    try:
        text = file.read_text()
    except FileNotFoundError:
        return
    try:
        parse_spec(text)
    except FailpointSpecError as exc:
        raise FailpointSpecError(f"{ENV_FILE} ({file}): {exc}") from None


def spent(control_file: Path, name: str) -> bool:
    """Has the counted action (``N*...``) switched on at ``name`` in ``control_file`` fired its
    N times? It then reads ``off`` there (the count is decremented before the action runs).

    A test switches a point on with a count, provokes the work, and asks this before it
    believes the outcome: a fault test whose fault never happened proves nothing. (A point
    switched ``off`` by hand reads the same: ask only about one switched on with a count.)
    """
    try:
        text = control_file.read_text()
    except FileNotFoundError:
        return False
    action = parse_spec(text).get(name)
    return action is not None and action.verb == "off"


def format_spec(actions: dict[str, Action]) -> str:
    return "".join(f"{name}={action}\n" for name, action in actions.items())


class _Registry:
    """The switched-on points of this process, from the environment and the control file."""

    def __init__(self, settings: Settings) -> None:
        self.env_actions = parse_spec(settings.failpoints)
        self.file = settings.failpoints_file
        self._file_stamp: tuple[int, int] | None = None
        self._file_actions: dict[str, Action] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.env_actions) or self.file is not None

    def _reload(self) -> None:
        assert self.file is not None
        try:
            st = self.file.stat()
        except FileNotFoundError:
            self._file_stamp, self._file_actions = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._file_stamp:
            self._file_actions = parse_spec(self.file.read_text())
            self._file_stamp = stamp

    def take(self, name: str) -> Action | None:
        """The action to run at ``name`` now, consuming one of its count if it has one."""
        if self.file is not None:
            self._reload()
            if name in self._file_actions:
                return self._take_from_file(name)
        action = self.env_actions.get(name)
        if action is None or not _fires(action):
            return None
        if action.count is not None:
            left = action.count - 1
            self.env_actions[name] = (
                Action(action.verb, left, None, action.arg) if left else Action("off")
            )
        return action

    def _take_from_file(self, name: str) -> Action | None:
        assert self.file is not None
        with open(self.file, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            actions = parse_spec(f.read())
            action = actions.get(name)
            if action is None or not _fires(action):
                return None
            if action.count is not None:
                left = action.count - 1
                actions[name] = (
                    Action(action.verb, left, None, action.arg) if left else Action("off")
                )
                f.seek(0)
                f.truncate()
                f.write(format_spec(actions))
                f.flush()
                os.fsync(f.fileno())
        return action


def _fires(action: Action) -> bool:
    if action.verb == "off":
        return False
    return action.percent is None or random.random() * 100 < action.percent


_registry: _Registry | None = None


def registry() -> _Registry:
    global _registry
    if _registry is None:
        _registry = _Registry(get_settings())
    return _registry


def reset() -> None:
    """Forget the parsed settings, and the settings themselves: the next hit reads the
    environment afresh (tests change it between cases)."""
    global _registry
    get_settings.cache_clear()
    _registry = None


async def hit(name: str, invocation_id: str | None = None) -> None:
    """Pass the failpoint ``name``: nothing happens unless it is switched on."""
    reg = registry()
    if not reg.enabled:
        return
    if name not in CATALOGUE:
        raise KeyError(f"failpoint {name!r} is not in the catalogue")
    action = reg.take(name)
    if action is None:
        return
    log.warning(
        "FAILPOINT %s fired: %s (pid %d, invocation %s)", name, action, os.getpid(), invocation_id
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    if action.verb == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.verb == "pause":
        os.kill(os.getpid(), signal.SIGSTOP)
        log.warning(
            "FAILPOINT %s resumed (pid %d, invocation %s)", name, os.getpid(), invocation_id
        )
    elif action.verb == "error":
        raise FailpointError(f"failpoint {name} injected a transient error")
    elif action.verb == "sleep":
        await asyncio.sleep((action.arg or 0) / 1000)
