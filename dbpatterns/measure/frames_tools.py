"""The tools ``./lab frames`` drives: tcpdump captures the service port, strace counts the socket
syscalls of the service and restate-server, tshark decodes the capture as HTTP/2.

Each starts as a child process of the lab, is waited for until it says it is ready (tcpdump
listening, strace attached to every process), and is stopped with SIGINT so that it writes
everything it holds. Before tcpdump is stopped, it is asked (SIGUSR1) until it reports that it
has written every packet its filter took so far (``written_up_to_now``): on a busy machine it
may lag behind the traffic, and a packet still in the kernel's ring when SIGINT comes is never
written. A capture that had not written every packet it took by then fails
(``check_complete``): the counts would be short. ``frames`` runs the passes with them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbpatterns.measure.frame_counting import TRACED, TSHARK_FIELDS
from dbpatterns.stack import ChildProcess, LabError, spawn, tail, wait_until

#: Debian packages of the tools, by command (``./lab`` installs the missing ones with apt-get).
TOOLS = {"tcpdump": "tcpdump", "tshark": "tshark", "strace": "strace"}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise LabError(
            f"{', '.join(missing)} not found on PATH: `frames` captures with tcpdump, decodes "
            "with tshark and counts syscalls with strace",
            "`./lab frames` installs them with apt-get when run as root; or "
            f"`apt-get install {' '.join(TOOLS[t] for t in missing)}`",
        )


def _started(
    name: str, proc: ChildProcess, log: Path, ready: Callable[[str], bool], hint: str
) -> None:
    def is_ready() -> bool:
        return ready(log.read_text(errors="replace"))

    if not wait_until(is_ready, 15, alive=proc.alive):
        proc.stop(signal.SIGINT, timeout=5)
        raise LabError(f"{name} did not start; it says:\n{tail(log)}", hint)


#: The kernel's capture buffer, in KiB (tcpdump -B; libpcap's default is 2 MiB). In immediate
#: mode libpcap sizes every slot for the largest packet ``lo`` may carry, so the default holds
#: few packets: on a loaded machine, a burst while tcpdump waited for a CPU overflowed it (the
#: kernel dropped packets). With this buffer, none were dropped in the same conditions.
BUFFER_KIB = 32 * 1024
#: How long tcpdump may take to write what it took by the end of the body before the capture
#: is judged short.
CATCH_UP_S = 15.0


@dataclass(frozen=True)
class Counts:
    """tcpdump's counts, as it prints them on SIGUSR1 and when it stops.

    On ``lo`` the kernel's filter takes each packet twice, going out and coming in, and libpcap
    keeps only the incoming copy, in the order the packets came: the packets the filter had
    taken when it counted ``received`` are all written once ``2 * captured >= received``."""

    captured: int  # written to the file
    received: int  # taken by the kernel's filter
    dropped: int  # lost because the kernel's buffer was full

    @classmethod
    def parse(cls, tcpdump_says: str) -> Counts | None:
        """The last counts in what tcpdump printed; None if it printed none."""

        def packets(what: str) -> int | None:
            found = re.findall(rf"(\d+) packets? {what}", tcpdump_says)
            return int(found[-1]) if found else None

        captured, received = packets("captured"), packets("received by filter")
        dropped = packets("dropped by kernel")
        if captured is None or received is None or dropped is None:
            return None
        return cls(captured, received, dropped)

    def wrote(self, received: int) -> bool:
        """Every packet of the first ``received`` the filter took is written, none dropped."""
        return not self.dropped and 2 * self.captured >= received


@contextlib.contextmanager
def capturing(port: int, pcap: Path) -> Iterator[None]:
    """tcpdump on the loopback interface, TCP port ``port`` only, into ``pcap``. On leaving,
    once tcpdump has written every packet it took during the body, it is stopped; a capture
    that is short even so fails with ``LabError``."""
    log = pcap.with_suffix(".tcpdump.log")
    privileges = ["-Z", "root"] if os.geteuid() == 0 else []  # else it writes as `tcpdump`
    # --immediate-mode: without it, packets wait in the kernel's ring for a block to fill or a
    # timeout, and a capture stopped within a second of its last call writes none of them.
    argv = ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0", "-w", str(pcap)]
    argv += ["-B", str(BUFFER_KIB), *privileges]
    proc = spawn("tcpdump", [*argv, f"tcp port {port}"], log)
    try:
        _started(
            "tcpdump",
            proc,
            log,
            lambda text: "listening on" in text,
            "capturing needs root or the CAP_NET_RAW capability",
        )
        yield
        counts = caught_up(proc, log)
    finally:
        proc.stop(signal.SIGINT, timeout=15)
    # Judged on what tcpdump took during the body, not on its closing words: a packet that comes
    # while it stops (a keepalive PING, someone else's call) is taken by the filter but never
    # written, and belongs to none of the body's calls. Its closing words if it said nothing.
    check_complete(counts or Counts.parse(log.read_text(errors="replace")))


def caught_up(proc: ChildProcess, log: Path) -> Counts | None:
    """Ask tcpdump (SIGUSR1) how many packets its filter has taken (all of the body's are among
    them), then again until it has written as many (at most ``CATCH_UP_S``): it may lag behind
    the traffic on a busy machine. Those packets, and how many of them are written and lost;
    None if tcpdump said nothing."""
    first = _report(proc, log)
    now = first
    deadline = time.monotonic() + CATCH_UP_S
    while first is not None and now is not None and not now.wrote(first.received):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        now = _report(proc, log) or now
    if first is None or now is None:
        return None
    return Counts(now.captured, first.received, now.dropped)


def _report(proc: ChildProcess, log: Path) -> Counts | None:
    """The counts tcpdump prints on SIGUSR1; None if it printed none within 5 s."""
    offset = log.stat().st_size
    proc.popen.send_signal(signal.SIGUSR1)

    def printed() -> Counts | None:
        with log.open("rb") as f:
            f.seek(offset)
            return Counts.parse(f.read().decode(errors="replace"))

    if wait_until(lambda: printed() is not None, 5, 0.02, alive=proc.alive):
        return printed()
    return None


def check_complete(counts: Counts | None) -> None:
    """Every packet the filter took was written, none dropped; else the counts would be short."""
    if counts is None:
        raise LabError("tcpdump did not say how many packets it captured")
    if not counts.wrote(counts.received):
        raise LabError(
            f"tcpdump captured {counts.captured} of {counts.received} packets ({counts.dropped} "
            "dropped by the kernel): the counts would be short",
            f"tcpdump did not keep up with the traffic within {CATCH_UP_S:.0f} s; is the "
            "machine swapping, or something flooding the port? (its counts are in the "
            ".tcpdump.log beside the capture; keep them with --raw DIR)",
        )


@contextlib.contextmanager
def tracing(pids: Sequence[int], out: Path) -> Iterator[None]:
    """strace on ``pids`` and all their threads, the socket read and write syscalls, with
    timestamps and descriptor peers, into ``out``; detaches (the processes run on) at exit."""
    if not pids:
        yield
        return
    log = out.with_suffix(".strace.log")
    argv = ["strace", "-f", "-ttt", "-yy", "-s", "0", "-e", f"trace={TRACED}", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    proc = spawn("strace", argv, log)
    try:
        _started(
            "strace",
            proc,
            log,
            lambda text: len(re.findall(r"Process \d+ attached", text)) >= len(pids),
            "tracing needs root or the CAP_SYS_PTRACE capability (a container: "
            "--cap-add SYS_PTRACE)",
        )
        yield
    finally:
        proc.stop(signal.SIGINT, timeout=15)


def decode(pcap: Path, port: int) -> str:
    """tshark's ``TSHARK_FIELDS`` of every packet with a payload, the port decoded as HTTP/2."""
    argv = ["tshark", "-r", str(pcap), "-n", "-d", f"tcp.port=={port},http2"]
    argv += ["-Y", "tcp.len > 0", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]
    argv += ["-E", "aggregator=,", *(arg for f in TSHARK_FIELDS for arg in ("-e", f))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise LabError(f"tshark failed on {pcap}:\n{proc.stderr[-2000:]}")
    return proc.stdout
