"""The test kit's child processes: started in a session of their own with their output in a log
file, sent a signal if the test run dies without stopping them, and stopped for good at the end.
Every failure a user can act on is a ``KitError``: what went wrong, and what to do."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


class KitError(Exception):
    """A problem the user can act on: what went wrong, and what to do about it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem}\n  hint: {self.hint}" if self.hint else self.problem


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` seconds pass (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (``T``: stopped, ``Z``: exited), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec hook: the child gets ``sig`` when the thread that started it ends (Linux)."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class Child:
    """One started process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stopped(self) -> bool:
        """Is it stopped by SIGSTOP right now?"""
        return self.alive() and process_state(self.pid) == "T"

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Ask it to stop with ``sig`` (waking it first, if stopped); SIGKILL after ``timeout``."""
        if self.popen.poll() is not None:
            return
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
    death_signal: int = signal.SIGKILL,
) -> Child:
    """Start ``argv`` with its output appended to ``log_path``. Start it from a thread that
    lives as long as the child should: the child is sent ``death_signal`` when it ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')} starting {name}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                preexec_fn=_die_with_parent(death_signal),
            )
        except OSError as exc:
            raise KitError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    return Child(name, popen, log_path)


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``."""
    return {**os.environ, **extra}
