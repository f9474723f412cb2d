"""The benchmark's default load: wrk, a compiled load generator, driven by ``wrkload.lua``.

The load shares the two cores with the service, restate-server and Postgres it measures. A
Python load process spent about as much CPU per call as the service did; wrk spends a fraction
of it, and the benchmark reports what it spent either way (the ``load`` CPU column).

wrk runs one thread per connection (``-t C -c C``), so each connection has one request in
flight and the script can book each acknowledged credit to the user it was sent for: the
ledger check stays exact. wrk comes from Debian's packages (``./lab`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dbpatterns.measure.loadgen import target

SCRIPT = Path(__file__).with_name("wrkload.lua")
REQUEST_TIMEOUT_S = 30
USER_MARK = "@USER@"  # where wrkload.lua puts each request's user id (its USER)


class WrkError(RuntimeError):
    pass


@dataclass
class WrkOutcome:
    ok: int = 0
    failed: int = 0  # answered, but not with 200
    socket_errors: int = 0  # connect, read, write errors and timeouts: outcome unknown
    elapsed: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    acked: dict[str, int] = field(default_factory=dict)
    # The users of requests unanswered when wrk stopped (one per connection at most): Restate
    # finishes them, so each may have applied once, or not at all.
    pending: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)


def command(
    workload: str,
    ingress_url: str,
    users_file: Path,
    concurrency: int,
    duration: float,
    delta: int = 1,
    seed: int = 1,
) -> list[str]:
    """wrk's command line for ``workload``: its requests are built by ``loadgen.target``, the
    same as the Python load's, with a mark for the user id that the script fills in."""
    if workload == "direct":
        raise ValueError("wrk drives the Restate workloads; direct has no HTTP request")
    path, body, credits = target(workload, USER_MARK, delta)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed: `./lab bench` installs it (apt-get install wrk)")
    return [
        wrk, "-t", str(concurrency), "-c", str(concurrency), "-d", f"{duration:g}s",
        "--timeout", f"{REQUEST_TIMEOUT_S}s", "-s", str(SCRIPT), ingress_url,
        "--", path, body.decode(), str(users_file), str(credits), str(seed),
    ]  # fmt: skip


def parse(stdout: str) -> WrkOutcome:
    """What ``wrkload.lua``'s ``done()`` printed; wrk's own summary lines are ignored."""
    out = WrkOutcome()
    seen: set[str] = set()
    for line in stdout.splitlines():
        if not line.startswith("dbpatterns "):
            continue
        _, key, rest = line.split(" ", 2)
        seen.add(key)
        match key:
            case "acked":
                user, n = rest.rsplit(" ", 1)
                out.acked[user] = out.acked.get(user, 0) + int(n)
            case "pending":
                out.pending[rest] = out.pending.get(rest, 0) + 1
            case "sample":
                out.error_samples.append(rest)
            case "ok" | "failed" | "socket_errors":
                setattr(out, key, int(rest))
            case "elapsed_us":
                out.elapsed = int(rest) / 1e6
            case "p50_us" | "p95_us" | "p99_us" | "max_us":
                setattr(out, key.replace("_us", "_ms"), int(rest) / 1000)
    missing = {"ok", "failed", "elapsed_us", "p99_us"} - seen
    if missing:
        raise WrkError(f"wrk's output lacks {sorted(missing)}:\n{stdout[-2000:]}")
    return out


def run(
    workload: str,
    ingress_url: str,
    users: list[str],
    concurrency: int,
    duration: float,
    delta: int = 1,
    seed: int = 1,
) -> WrkOutcome:
    with tempfile.NamedTemporaryFile("w", suffix=".users") as users_file:
        users_file.write("\n".join(users) + "\n")
        users_file.flush()
        argv = command(
            workload, ingress_url, Path(users_file.name), concurrency, duration, delta, seed
        )
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    if proc.returncode != 0:
        raise WrkError(f"wrk failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return parse(proc.stdout)
