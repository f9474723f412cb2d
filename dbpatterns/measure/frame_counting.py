"""Counting a run of sequential calls out of what tshark and strace printed (``./lab frames``).

Pure functions over text, so that the attribution rules can be tested on crafted input:

* ``parse_packets`` reads tshark's ``-T fields`` lines (one packet a line; the HTTP/2 fields of
  every frame in a packet comma-separated, in frame order) into ``Packet``s.
* ``count_frames`` gives each HTTP/2 frame, TCP segment and payload byte to the call it belongs
  to, or excludes it: a frame on a stream belongs to the call in whose time window restate-server
  opened that stream (with a HEADERS frame to the service); a connection-level frame (stream 0:
  SETTINGS, PING, WINDOW_UPDATE of the connection, GOAWAY) and a segment that carries no whole
  frame belong to the call in whose window they travel. Streams opened before the first call,
  streams beyond the first one in a window, and connections that carry no call's stream are
  excluded and counted as such.
* ``parse_strace`` and ``count_syscalls`` do the same for the socket syscalls of one process
  (``strace -f -ttt -yy``): each syscall counts for the call in whose window it started, under the
  peer of its file descriptor (the connection to restate-server, to Postgres, ...).

``WireCounts`` holds one workload's counts, from which ``frames_report`` makes the tables.

A call's window runs from the moment its request was sent to the moment the next call's was;
the last one ends when the measurement stopped. The calls are sequential, so whatever one call
causes happens in its window, late WINDOW_UPDATEs included.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: HTTP/2 frame types (RFC 9113, section 6) by the number tshark prints for ``http2.type``.
FRAME_TYPES = {
    0: "DATA",
    1: "HEADERS",
    2: "PRIORITY",
    3: "RST_STREAM",
    4: "SETTINGS",
    5: "PUSH_PROMISE",
    6: "PING",
    7: "GOAWAY",
    8: "WINDOW_UPDATE",
    9: "CONTINUATION",
}
#: The fields ``parse_packets`` expects, in this order, from ``tshark -T fields``.
TSHARK_FIELDS = (
    "frame.time_epoch",
    "tcp.stream",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.len",
    "http2.type",
    "http2.streamid",
    "http2.magic",  # the connection preface: the connection was opened during the capture
)
TO_SERVICE = "restate>service"
TO_RESTATE = "service>restate"
DIRECTIONS = (TO_SERVICE, TO_RESTATE)


class CountingError(Exception):
    """The input does not allow an honest count (nothing decoded, fields that do not pair)."""


# --- the calls' time windows -------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """Call ``i`` runs from ``starts[i]`` to ``starts[i + 1]`` (the last one to ``stop``)."""

    starts: tuple[float, ...]
    stop: float

    def __post_init__(self) -> None:
        if (
            not self.starts
            or list(self.starts) != sorted(self.starts)
            or self.stop < self.starts[-1]
        ):
            raise ValueError(f"windows must be ordered and non-empty: {self}")

    @property
    def calls(self) -> int:
        return len(self.starts)

    def call_at(self, t: float) -> int | None:
        """The call whose window holds time ``t``, or None (before the first, after the end)."""
        if t >= self.stop:
            return None
        i = bisect.bisect_right(self.starts, t) - 1
        return i if i >= 0 else None


# --- HTTP/2 frames from tshark -----------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    time: float
    connection: int  # tshark's tcp.stream index
    to_service: bool
    payload: int  # tcp.len
    frames: tuple[tuple[str, int], ...]  # (frame type, stream id), in packet order
    preface: bool = False  # carries the client's connection preface (a new connection)

    @property
    def direction(self) -> str:
        return TO_SERVICE if self.to_service else TO_RESTATE


def _values(cell: str) -> list[str]:
    return [v for v in cell.split(",") if v] if cell else []


def parse_packets(text: str, service_port: int) -> list[Packet]:
    """tshark's field lines (``TSHARK_FIELDS``, tab-separated, occurrences joined by commas)."""
    packets = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(TSHARK_FIELDS):
            raise CountingError(
                f"tshark line {number}: {len(cells)} fields, not {len(TSHARK_FIELDS)}: {line!r}"
            )
        time, conn, src, dst, length, types, streams, magic = cells
        if service_port not in (int(src), int(dst)):
            raise CountingError(f"tshark line {number}: not to or from port {service_port}")
        kinds, ids = _values(types), _values(streams)
        if len(kinds) != len(ids):
            raise CountingError(
                f"tshark line {number}: {len(kinds)} frame types but {len(ids)} stream ids"
            )
        frames = tuple(
            (FRAME_TYPES.get(int(k), f"type-{k}"), int(s)) for k, s in zip(kinds, ids, strict=True)
        )
        packets.append(
            Packet(
                time=float(time),
                connection=int(conn),
                to_service=int(dst) == service_port,
                payload=int(length or 0),
                frames=frames,
                preface=bool(magic),
            )
        )
    return packets


@dataclass
class Traffic:
    """One direction of the calls' traffic, summed over all calls."""

    frames: Counter[str] = field(default_factory=Counter)
    segments: int = 0  # TCP segments carrying payload
    payload_bytes: int = 0


@dataclass
class FrameCount:
    calls: int
    traffic: dict[str, Traffic]  # by direction
    call_streams: int  # streams attributed to calls (one per call expected)
    frames_per_call: list[dict[str, int]]  # each call's frames by direction
    excluded_streams: int = 0  # opened before the first call, or a second one in a window
    excluded_frames: int = 0
    excluded_segments: int = 0
    other_connections: int = 0  # TCP connections to the port that carried no call
    connections_opened: int = 0  # connection prefaces seen: their setup is in the counts


def count_frames(packets: Sequence[Packet], windows: Windows) -> FrameCount:
    """Each frame, segment and byte of ``packets`` given to a call of ``windows``, or excluded.

    Raises ``CountingError`` if a call shows no HEADERS frame in either direction: then tshark
    did not decode the traffic as HTTP/2, and zeros would be a lie."""
    first_seen: dict[tuple[int, int], tuple[float, str, bool]] = {}
    for p in packets:
        for kind, stream in p.frames:
            if stream and (p.connection, stream) not in first_seen:
                first_seen[(p.connection, stream)] = (p.time, kind, p.to_service)
    owner: dict[tuple[int, int], int] = {}
    taken: set[int] = set()
    excluded_streams = 0
    for key, (t, kind, to_service) in sorted(first_seen.items(), key=lambda kv: kv[1][0]):
        call = windows.call_at(t)
        if call is not None and kind == "HEADERS" and to_service and call not in taken:
            owner[key] = call
            taken.add(call)
        else:
            excluded_streams += 1
    connections = {conn for conn, _ in owner}
    count = FrameCount(
        calls=windows.calls,
        traffic={d: Traffic() for d in DIRECTIONS},
        call_streams=len(owner),
        frames_per_call=[dict.fromkeys(DIRECTIONS, 0) for _ in range(windows.calls)],
        excluded_streams=excluded_streams,
        other_connections=len({p.connection for p in packets} - connections),
        connections_opened=sum(p.preface for p in packets),
    )
    headers = [dict.fromkeys(DIRECTIONS, 0) for _ in range(windows.calls)]
    for p in packets:
        if not p.payload:
            continue
        if p.connection not in connections:
            count.excluded_segments += 1
            count.excluded_frames += len(p.frames)
            continue
        traffic = count.traffic[p.direction]
        calls = set()
        for kind, stream in p.frames:
            call = owner.get((p.connection, stream)) if stream else windows.call_at(p.time)
            if call is None:
                count.excluded_frames += 1
                continue
            calls.add(call)
            traffic.frames[kind] += 1
            count.frames_per_call[call][p.direction] += 1
            headers[call][p.direction] += kind == "HEADERS"
        if not p.frames:  # part of a frame that ends in a later segment
            call = windows.call_at(p.time)
            if call is not None:
                calls.add(call)
        if calls:
            traffic.segments += 1
            traffic.payload_bytes += p.payload
        else:
            count.excluded_segments += 1
    undecoded = [
        f"call {i + 1}: HEADERS {h[TO_SERVICE]} to the service, {h[TO_RESTATE]} back"
        for i, h in enumerate(headers)
        if not (h[TO_SERVICE] and h[TO_RESTATE])
    ]
    if undecoded:
        raise CountingError(
            f"{len(undecoded)} of {windows.calls} calls show no HTTP/2 HEADERS frame in one "
            f"direction, so the capture was not decoded as HTTP/2 (or missed the calls): "
            + "; ".join(undecoded[:5])
        )
    return count


# --- socket syscalls from strace ---------------------------------------------------------------

WRITES = frozenset({"write", "writev", "sendto", "sendmsg"})
READS = frozenset({"read", "recvfrom", "recvmsg"})
TRACED = ",".join(sorted(WRITES | READS))

_PREFIX = r"^(?:(?P<pid>\d+)\s+)?(?P<time>\d+\.\d+)\s+"
_START = re.compile(_PREFIX + r"(?P<name>\w+)\((?P<fd>\d+)<(?P<what>.*?)>, (?P<rest>.*)$")
_RESUMED = re.compile(_PREFIX + r"<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_RESULT = re.compile(r"\)\s+=\s+(?P<result>-?\d+|\?)")
_TCP = re.compile(
    r"^TCP(?:v6)?:\[\[?(?P<local>.*?)\]?:(?P<lport>\d+)->\[?(?P<remote>.*?)\]?:(?P<rport>\d+)\]$"
)


@dataclass(frozen=True)
class Syscall:
    time: float
    name: str
    fd: str  # strace's -yy description: TCP:[local->remote], pipe:[...], a path
    failed: bool  # returned -1 (EAGAIN from a non-blocking read, mostly)

    @property
    def kind(self) -> str:
        return "writes" if self.name in WRITES else "reads"


def parse_strace(text: str) -> list[Syscall]:
    """``strace -f -ttt -yy -s 0`` output: one syscall per call line; a call split by another
    thread's line (``<unfinished ...>`` ... ``<... name resumed>``) counts once, with the fd and
    time of its start and the result of its end."""
    calls: list[Syscall] = []
    pending: dict[str, tuple[float, str, str]] = {}
    for line in text.splitlines():
        if m := _START.match(line):
            name = m["name"]
            if name not in WRITES | READS:
                continue
            start = (float(m["time"]), name, m["what"])
            if m["rest"].endswith("<unfinished ...>"):
                pending[m["pid"] or ""] = start
                continue
            calls.append(Syscall(*start, failed=_failed(m["rest"])))
        elif (m := _RESUMED.match(line)) and (m["pid"] or "") in pending:
            start = pending.pop(m["pid"] or "")
            calls.append(Syscall(*start, failed=_failed(m["rest"])))
    calls.extend(Syscall(*start, failed=False) for start in pending.values())  # cut at detach
    return sorted(calls, key=lambda c: c.time)


def _failed(rest: str) -> bool:
    results = _RESULT.findall(rest)
    return bool(results) and results[-1] == "-1"


def tcp_ports(fd: str) -> tuple[int, int] | None:
    """(local port, remote port) of a TCP socket as strace -yy describes it."""
    m = _TCP.match(fd)
    return (int(m["lport"]), int(m["rport"])) if m else None


def service_peer(service_port: int, postgres_port: int) -> Callable[[str], str]:
    """The service's sockets: ``restate`` (the port Restate calls), ``postgres``, ``other``
    (the event loop's self-pipe, log files, the janitor's calls to the admin API, ...)."""

    def peer(fd: str) -> str:
        ports = tcp_ports(fd)
        if ports and ports[0] == service_port:
            return "restate"
        if ports and ports[1] == postgres_port:
            return "postgres"
        return "other"

    return peer


def restate_peer(service_port: int, ingress_port: int) -> Callable[[str], str]:
    """restate-server's file descriptors: ``service`` (its connections to the service),
    ``ingress`` (the callers' connections), ``other`` (RocksDB files, eventfds, nodes, ...)."""

    def peer(fd: str) -> str:
        ports = tcp_ports(fd)
        if ports and ports[1] == service_port:
            return "service"
        if ports and ports[0] == ingress_port:
            return "ingress"
        return "other"

    return peer


@dataclass
class SyscallCount:
    calls: int
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (peer, kind), summed
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)  # of which returned -1
    by_name: Counter[str] = field(default_factory=Counter)
    excluded: int = 0  # outside every call's window

    def per_call(self, peer: str, kind: str) -> float:
        return self.counts[(peer, kind)] / self.calls


def count_syscalls(
    syscalls: Sequence[Syscall], windows: Windows, peer: Callable[[str], str]
) -> SyscallCount:
    count = SyscallCount(calls=windows.calls)
    for call in syscalls:
        if windows.call_at(call.time) is None:
            count.excluded += 1
            continue
        key = (peer(call.fd), call.kind)
        count.counts[key] += 1
        count.failed[key] += call.failed
        count.by_name[call.name] += 1
    return count


# --- one workload -------------------------------------------------------------------------------


@dataclass
class WireCounts:
    """One workload's counts on the wire: the capture pass's frames, the trace pass's
    syscalls."""

    workload: str
    calls: int
    frames: FrameCount
    service: SyscallCount
    restate: SyscallCount | None  # None: no restate-server process to trace
    warmup_calls: int = 0
    connections_opened_traced: int = 0  # during the strace pass (after its last attempt)

    def frames_per_call(self) -> float:
        """HTTP/2 frames per call, both directions together."""
        return sum(sum(t.frames.values()) for t in self.frames.traffic.values()) / self.calls

    def sender_writes(self, direction: str) -> float | None:
        """Write syscalls per call of the side that sends ``direction``, on this connection."""
        if direction == TO_RESTATE:
            return self.service.per_call("restate", "writes")
        return self.restate.per_call("service", "writes") if self.restate else None

    def receiver_reads(self, direction: str) -> float | None:
        if direction == TO_SERVICE:
            return self.service.per_call("restate", "reads")
        return self.restate.per_call("service", "reads") if self.restate else None
