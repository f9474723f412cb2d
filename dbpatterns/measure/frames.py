"""What one call costs on the wire between restate-server and the service: HTTP/2 frames by type,
TCP segments, payload bytes and socket syscalls, per call (``./lab frames``).

Against the running lab (found through the state file of ``./lab up``), for each workload:
warm-up calls, then two passes of N sequential calls through the Restate ingress (bodies as
``dbpatterns.measure.loadgen.target`` builds them for ``./lab bench``).

restate-server opens an HTTP/2 connection to the service per partition that invokes it (seen
with 1.7.12: on a fresh lab, each no-op call, landing on a random partition, opened a new one,
with its preface and SETTINGS exchange). The figures are meant for calls over open connections:
the warm-up goes on until 50 calls in a row opened none (``warm_up``), and a pass during which
one was opened anyway runs again, up to three times; what remains is reported under the row.
The passes:

1. Capture pass. ``tcpdump -i lo`` records the service port only; ``tshark``, told that the
   port speaks HTTP/2 (``-d tcp.port==PORT,http2``), lists every packet's HTTP/2 frames (type
   and stream id). The connections were opened before the capture: tshark never sees their
   preface or SETTINGS, and cannot decompress their headers, but frame headers are plain and
   decode all the same. That is checked, not assumed:
   a call without a HEADERS frame in each direction fails the run (``count_frames``).
2. Trace pass. ``strace -f -ttt -yy`` on the service process (all its threads) and on every
   restate-server process counts the socket syscalls (``write``, ``writev``, ``sendto``,
   ``sendmsg``, ``read``, ``recvfrom``, ``recvmsg``), each under the peer of its descriptor: the
   Restate connection, Postgres, or anything else. A separate pass, because ptrace slows both
   processes and would change how their writes coalesce into TCP segments.

Each call owns the time from its request to the next call's request (``frame_counting.Windows``).
What else may travel on the service port, and how it is kept out:

* Connection-level frames (stream 0) in a call's window count for that call: restate-server's
  and the service's WINDOW_UPDATEs for the connection, and PINGs, which hyper sends both to
  estimate bandwidth (caused by the calls) and to keep an idle connection alive (not caused by
  them; they show up in the PING column).
* Streams that another caller's invocation opens, a retry of an earlier invocation, or a
  scheduled call coming due (``idempotency.update`` schedules its token's expiry; with a short
  ``DBPATTERNS_IDEMPOTENCY_TOKEN_TTL`` it runs during the run): the first stream restate-server
  opens in a call's window is that call's; any other stream is excluded and reported.
* Other TCP connections to the port (``./lab status``'s health checks, a deployment discovery
  when someone registers the service, a new connection of restate-server) are excluded unless
  they carry a call's stream.
* The syscalls cannot be told apart by stream: those of the service's janitor (a sweep every
  ``DBPATTERNS_JANITOR_INTERVAL``: Postgres and the admin API) count when they fall in a window,
  in the ``postgres`` and ``other`` peers, never in the Restate connection's.

The figures are totals over the N calls divided by N; nothing is estimated. The tools are
driven by ``frames_tools``, the counting rules are in ``frame_counting``, the tables in
``frames_report``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from dbpatterns.measure.frame_counting import (
    CountingError,
    FrameCount,
    SyscallCount,
    Windows,
    WireCounts,
    count_frames,
    count_syscalls,
    parse_packets,
    parse_strace,
    restate_peer,
    service_peer,
    tcp_ports,
)
from dbpatterns.measure.frames_report import header, rows
from dbpatterns.measure.frames_tools import capturing, decode, require_tools, tracing
from dbpatterns.measure.loadgen import target
from dbpatterns.stack import LabError, pid_alive, procfs
from dbpatterns.stack.state import load as load_state

WORKLOADS = (
    "baseline.noop",
    "simple.read",
    "simple.durableRead",
    "keyed.update",
    "keyed.updateConditional",
    "idempotency.update",
    "twoPhaseCommit.update",
)
FRAMES_USER = "frames-user"
STABLE_CALLS = 50  # warm-up: this many calls in a row without a new connection ...
MAX_WARMUP = 500  # ... or this many calls in all
ATTEMPTS = 3  # a pass during which restate-server opened a connection is run again
SETTLE_S = 0.2  # after the tools attach, before the first call
GRACE_S = 0.5  # after the last call, for its last frames (late WINDOW_UPDATEs)


@dataclass(frozen=True)
class TracedStack:
    """The running stack as ``frames`` sees it: the ingress it calls, the database it seeds, the
    service port it captures, the processes it traces."""

    ingress_url: str
    database_url: str
    service_port: int
    service_pid: int
    restate_pids: tuple[int, ...]  # none: restate-server does not run here (a container)

    @classmethod
    def from_state(cls, home: Path) -> TracedStack:
        state = load_state(home)
        if state is None:
            raise LabError(
                f"no running lab in {home}", "start it with `./lab up` in another terminal"
            )
        pids = state.pids()
        dead = [f"{name} (pid {pid})" for name, pid in pids.items() if not pid_alive(pid)]
        if dead or "service" not in pids:
            raise LabError(
                f"the lab in {home} is not fully up: {', '.join(dead) or 'no service'}",
                "`./lab status` tells which part is down; `./lab up` starts them",
            )
        return cls(
            ingress_url=state.ingress_url,
            database_url=state.database_url,
            service_port=port_of(state.service_url),
            service_pid=pids["service"],
            restate_pids=tuple(pid for name, pid in pids.items() if name.startswith("restate")),
        )

    @property
    def ingress_port(self) -> int:
        return port_of(self.ingress_url)

    @property
    def postgres_port(self) -> int:
        return int(psycopg.conninfo.conninfo_to_dict(self.database_url).get("port") or 5432)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise LabError(f"no port in {url!r}")
    return port


# --- one workload ------------------------------------------------------------------------------


def prepare_user(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (userid) DO NOTHING",
            (FRAMES_USER, "Frames User", "1 Wire Way", 1_000_000),
        )


def call(client: httpx.Client, workload: str) -> None:
    path, body, _ = target(workload, FRAMES_USER, 1)
    headers = {"content-type": "application/json"} if body else {}
    response = client.post(path, content=body, headers=headers)
    if response.status_code != 200:
        raise LabError(
            f"{workload}: POST {path} answered HTTP {response.status_code}: {response.text[:300]}",
            "is the service registered and healthy (`./lab status`)?",
        )


def sequence(client: httpx.Client, workload: str, calls: int) -> Windows:
    """``calls`` calls one after the other; their windows."""
    time.sleep(SETTLE_S)
    starts = []
    for _ in range(calls):
        starts.append(time.time())
        call(client, workload)
    time.sleep(GRACE_S)
    return Windows(tuple(starts), time.time())


def established(port: int) -> set[int]:
    """The remote ports of the established TCP connections to local ``port`` (restate-server's
    ends of its connections to the service), from ``/proc/net/tcp`` and ``tcp6``."""
    return {
        socket.remote_port
        for socket in procfs.tcp_sockets()
        if socket.state == procfs.ESTABLISHED and socket.local_port == port
    }


def warm_up(client: httpx.Client, workload: str, port: int, minimum: int) -> int:
    """At least ``minimum`` calls, then more until ``STABLE_CALLS`` in a row opened no new
    connection to the service (at most ``MAX_WARMUP``): restate-server opens one for each
    partition that invokes the service, and a call lands on a random partition unless it is
    keyed. Returns the number of calls made."""
    known = established(port)
    made = streak = 0
    while made < minimum or (streak < STABLE_CALLS and made < MAX_WARMUP):
        call(client, workload)
        made += 1
        now = established(port)
        streak = 0 if now - known else streak + 1
        known |= now
    return made


def capture_pass(
    stack: TracedStack, client: httpx.Client, workload: str, calls: int, pcap: Path
) -> FrameCount:
    """The calls under tcpdump, counted; again (up to ``ATTEMPTS`` times) if restate-server
    opened a connection meanwhile, whose setup would count for a call."""
    for _ in range(ATTEMPTS):
        with capturing(stack.service_port, pcap):
            windows = sequence(client, workload, calls)
        try:
            packets = parse_packets(decode(pcap, stack.service_port), stack.service_port)
            frames = count_frames(packets, windows)
        except CountingError as exc:
            raise LabError(
                f"{workload}: {exc}",
                f"look at the capture (keep it with --raw DIR): "
                f"tshark -r {pcap.name} -d tcp.port=={stack.service_port},http2",
            ) from exc
        if not frames.connections_opened:
            break
    return frames


@dataclass
class Traced:
    service: SyscallCount
    restate: SyscallCount | None
    connections_opened: int


def trace_pass(
    stack: TracedStack, client: httpx.Client, workload: str, calls: int, workdir: Path
) -> Traced:
    """The calls under strace, counted; again (up to ``ATTEMPTS`` times) if restate-server
    opened a connection meanwhile."""
    service_trace = workdir / f"{workload}.service.strace"
    restate_trace = workdir / f"{workload}.restate.strace"
    for _ in range(ATTEMPTS):
        before = established(stack.service_port)
        with (
            tracing([stack.service_pid], service_trace),
            tracing(stack.restate_pids, restate_trace),
        ):
            windows = sequence(client, workload, calls)
        syscalls = parse_strace(service_trace.read_text())
        used = {
            ports[1]
            for c in syscalls
            if (ports := tcp_ports(c.fd)) and ports[0] == stack.service_port
        }
        service = count_syscalls(
            syscalls, windows, service_peer(stack.service_port, stack.postgres_port)
        )
        restate = None
        if stack.restate_pids:
            restate = count_syscalls(
                parse_strace(restate_trace.read_text()),
                windows,
                restate_peer(stack.service_port, stack.ingress_port),
            )
        traced = Traced(service, restate, len(used - before))
        if not traced.connections_opened:
            break
    seen = {"the service's reads": service.counts[("restate", "reads")],
            "the service's writes": service.counts[("restate", "writes")]}  # fmt: skip
    if restate is not None:
        seen["restate-server's writes"] = restate.counts[("service", "writes")]
    short = [f"{what}: {n}" for what, n in seen.items() if n < calls]
    if short:
        raise LabError(
            f"{workload}: strace saw fewer socket syscalls on the Restate connection than calls "
            f"({calls}): {', '.join(short)}",
            f"were the right processes traced (service pid {stack.service_pid}, restate-server "
            f"{list(stack.restate_pids)})? Keep the traces with --raw DIR and look",
        )
    return traced


def measure(
    stack: TracedStack, workload: str, *, calls: int, warmup: int, workdir: Path
) -> WireCounts:
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:
        warmed = warm_up(client, workload, stack.service_port, warmup)
        frames = capture_pass(stack, client, workload, calls, workdir / f"{workload}.pcap")
        traced = trace_pass(stack, client, workload, calls, workdir)
    return WireCounts(
        workload,
        calls,
        frames,
        traced.service,
        traced.restate,
        warmup_calls=warmed,
        connections_opened_traced=traced.connections_opened,
    )


def run(
    stack: TracedStack,
    workloads: Sequence[str],
    *,
    calls: int,
    warmup: int,
    raw_dir: Path | None = None,
    say: Callable[[str], None] = print,
) -> list[WireCounts]:
    """Measure each workload in turn; prints the table as it goes."""
    require_tools()
    prepare_user(stack.database_url)
    results = []
    with contextlib.ExitStack() as cleanup:
        if raw_dir is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="frames-")))
        else:
            workdir = raw_dir
            workdir.mkdir(parents=True, exist_ok=True)
        say(header())
        for workload in workloads:
            result = measure(stack, workload, calls=calls, warmup=warmup, workdir=workdir)
            results.append(result)
            for line in rows(result):
                say(line)
    return results
