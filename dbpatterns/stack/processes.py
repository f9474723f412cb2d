"""Child processes the lab owns: start, wait, stop, kill; and the small checks around them
(ports, PIDs, HTTP health). Every failure a user can act on is a ``LabError``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from dbpatterns.stack import procfs


class LabError(Exception):
    """A problem the user can act on: what went wrong, and what to do about it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem}\n  hint: {self.hint}" if self.hint else self.problem


# --- small helpers ---------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_free_ports(ports: Mapping[str, tuple[str, int]]) -> None:
    busy = [
        (what, host, port) for what, (host, port) in ports.items() if not port_is_free(host, port)
    ]
    if busy:
        lines = ", ".join(f"{what} {host}:{port}" for what, host, port in busy)
        raise LabError(
            f"port already in use: {lines}",
            "stop whatever listens there (is the lab already up? try `./lab status`), "
            "or choose other ports with DBPATTERNS_INGRESS_PORT, DBPATTERNS_ADMIN_PORT, "
            "DBPATTERNS_RESTATE_NODE_PORT, DBPATTERNS_RESTATE_CLUSTER_PORT_BASE (a cluster's), "
            "DBPATTERNS_SERVICE_PORT or the port in DBPATTERNS_DATABASE_URL",
        )


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone; a process that cannot be read, as alive.
    return procfs.state(pid) != "Z"


def pid_stopped(pid: int) -> bool:
    """Is the process stopped (SIGSTOP) now? A signal is delivered after ``kill`` returns, so a
    caller that must know the stop took effect asks this."""
    return procfs.state(pid) == "T"


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec hook: the child gets ``sig`` if the lab process dies without cleaning up."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, sig)

    return hook


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(interval)
    return check()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class RunAs:
    """The OS user a child runs as (only Postgres, only when the lab runs as root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def postgres_if_root(cls) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise LabError(
                "running as root, but there is no `postgres` OS user to run the server as "
                "(initdb refuses to run as root)",
                "install the PostgreSQL server package (it creates the user), "
                "or run the lab as an unprivileged user",
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def check_reachable(self, path: Path) -> None:
        """The user must be able to walk down to ``path``; say which folder blocks it if not."""
        for parent in reversed(path.parents):
            st = parent.stat()
            if st.st_uid != self.uid and not st.st_mode & 0o001:
                raise LabError(
                    f"the `{self.name}` OS user, which runs PostgreSQL here, cannot reach "
                    f"{path}: {parent} is not searchable by other users",
                    f"set DBPATTERNS_HOME to a folder under a world-searchable path "
                    f"(e.g. /var/tmp/dbpatterns), or `chmod o+x {parent}`",
                )


# --- processes ---------------------------------------------------------------------------------


@dataclass
class ChildProcess:
    """A started part of the stack: its process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Ask the process to stop with ``sig``; SIGKILL it if it has not after ``timeout``."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # A paused process cannot act on its signal: wake it first.
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs in the process."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(10)

    def pause(self) -> None:
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
    death_signal: int = signal.SIGTERM,
) -> ChildProcess:
    """Start ``argv`` in its own session (a Ctrl-C reaches the lab, which then stops its parts
    in order), with output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes]
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
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
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                preexec_fn=_die_with_parent(death_signal),
            )
        except FileNotFoundError as exc:
            raise LabError(f"cannot start {name}: {exc}") from exc
    return ChildProcess(name, popen, log_path)
