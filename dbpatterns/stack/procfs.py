"""The one reader of Linux's ``/proc`` in the lab: processes, their threads and sockets.

The stack asks whether a process is alive or stopped; the bench and the profile read CPU time
by process and by thread; the frames run and the chaos suite's network find which process holds
a TCP connection. Each reads it here, once, the same way: a ``stat`` line is split after the
last ``)`` (a command name may hold spaces and parentheses), and a process or thread that ended
meanwhile reads as absent, never as an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
#: Clock ticks per second, the unit of ``utime`` and ``stime``.
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: ``st`` value of an established TCP socket in ``/proc/net/tcp``.
ESTABLISHED = "01"


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` (or of a thread's) the lab reads."""

    name: str  # the command, from between the parentheses
    state: str  # R, S, D, T (stopped), Z (zombie), ...
    ppid: int
    cpu_seconds: float  # utime + stime

    @classmethod
    def parse(cls, line: str) -> Stat:
        name = line[line.index("(") + 1 : line.rindex(")")]
        fields = line[line.rindex(")") + 2 :].split()  # from field 3 (state) on
        ticks = int(fields[11]) + int(fields[12])
        return cls(name=name, state=fields[0], ppid=int(fields[1]), cpu_seconds=ticks / CLK_TCK)


def stat(pid: int) -> Stat | None:
    """The process's stat now; None if it is gone."""
    try:
        return Stat.parse((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (R, S, T for stopped, Z, ...); "" if gone."""
    found = stat(pid)
    return found.state if found else ""


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process has used; 0 if it is gone."""
    found = stat(pid)
    return found.cpu_seconds if found else 0.0


def pids() -> Iterator[int]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces; "" if it is gone."""
    try:
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [p for p in pids() if (found := stat(p)) is not None and found.ppid == pid]


def threads(pid: int) -> dict[int, Stat]:
    """Each live thread of ``pid`` (its task id -> its stat)."""
    found: dict[int, Stat] = {}
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                found[int(task.name)] = Stat.parse((task / "stat").read_text())
    return found


@dataclass(frozen=True)
class Socket:
    """A TCP socket of ``/proc/net/tcp`` (or ``tcp6``): ports, state and inode."""

    local_port: int
    remote_port: int
    state: str
    inode: int


def tcp_sockets(tables: tuple[str, ...] = ("tcp", "tcp6")) -> Iterator[Socket]:
    """Every TCP socket the kernel lists in ``/proc/net/<table>``."""
    for table in tables:
        try:
            rows = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            yield Socket(
                local_port=int(fields[1].rsplit(":", 1)[1], 16),
                remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                state=fields[3],
                inode=int(fields[9]),
            )


def holds_socket(pid: int, inode: int) -> bool:
    """Does ``pid`` hold socket ``inode`` open (one of its file descriptors)?"""
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False
