"""The tools ``./lab frames`` drives: tcpdump captures the service port, strace counts the socket
syscalls of the service and restate-server, tshark decodes the capture as HTTP/2.

Each starts as a child process of the lab, is waited for until it says it is ready (tcpdump
listening, strace attached to every process), and is stopped with SIGINT so that it writes
everything it holds. A capture that did not write every packet it took fails
(``check_complete``): the counts would be short. ``frames`` runs the passes with them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
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


@contextlib.contextmanager
def capturing(port: int, pcap: Path) -> Iterator[None]:
    """tcpdump on the loopback interface, TCP port ``port`` only, into ``pcap``."""
    log = pcap.with_suffix(".tcpdump.log")
    privileges = ["-Z", "root"] if os.geteuid() == 0 else []  # else it writes as `tcpdump`
    # --immediate-mode: without it, packets wait in the kernel's ring for a block to fill or a
    # timeout, and a capture stopped within a second of its last call writes none of them.
    argv = ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0", "-w", str(pcap)]
    argv += privileges
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
    finally:
        proc.stop(signal.SIGINT, timeout=15)
    check_complete(log.read_text(errors="replace"))


def check_complete(tcpdump_says: str) -> None:
    """tcpdump's closing words: every packet its filter took was written, none dropped.

    On ``lo`` the kernel's filter sees each packet twice, going out and coming in, and libpcap
    keeps only the incoming copy: every packet is written when ``received`` is twice
    ``captured``."""

    def packets(what: str) -> int | None:
        found = re.findall(rf"(\d+) packets? {what}", tcpdump_says)
        return int(found[-1]) if found else None

    captured, received = packets("captured"), packets("received by filter")
    dropped = packets("dropped by kernel")
    if captured is None or received is None or dropped is None:
        raise LabError(f"tcpdump did not say how many packets it captured:\n{tcpdump_says}")
    if dropped or 2 * captured < received:
        raise LabError(
            f"tcpdump captured {captured} of {received} packets ({dropped} dropped by the "
            "kernel): the counts would be short",
            "run it again on a quieter machine",
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
