"""The benchmark's Python load (``--load python``, and always for ``direct``): a process of its
own that drives one workload and reports JSON. The default load is wrk
(``dbpatterns.measure.wrkload``).

Run by ``dbpatterns bench`` as ``python -m dbpatterns.measure.loadgen SPEC_JSON``; it prints one
JSON object on stdout. Requests go over plain HTTP/1.1 keep-alive connections, one per virtual
user, written and parsed by hand on asyncio streams: an HTTP client library would cost more
CPU than the service it measures on a 2-core machine. Every request is bounded in time, the
whole run by ``duration``; nothing targets anything but the given loopback address.

The ``direct`` workload is the one without Restate: the same credit UPDATE as ``keyed.update``,
through the same pool code as the service (``dbpatterns.service.db.create_pool``). This process then
plays the service's part, so it reports its own CPU time and that of its Postgres backends,
which end with it, before the benchmark could sample them.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 30.0
DIRECT_APPLICATION_NAME = "dbpatterns-bench-direct"


@dataclass(frozen=True)
class Spec:
    workload: str  # a key of TARGETS, or "direct"
    ingress_url: str
    database_url: str
    users: list[str]
    concurrency: int
    duration: float
    pool_size: int = 10
    delta: int = 1
    seed: int = 1
    # ``direct``: Postgres runs on this host (its backends' CPU can be read from /proc)
    local_postgres: bool = False


@dataclass
class PythonLoadOutcome:
    """What the Python load counted over its run, as the JSON it prints (``bench`` reads it
    into a ``LoadOutcome``, as it reads wrk's ``WrkOutcome``)."""

    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # user -> credits acknowledged
    elapsed: float = 0.0
    # ``direct`` only: CPU seconds of this process's run and of each of its Postgres backends.
    client_cpu_seconds: float | None = None
    backend_cpu_seconds: dict[int, float] | None = None

    def success(self, user: str, delta: int, started: float) -> None:
        self.ok += 1
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if delta:
            self.acked[user] = self.acked.get(user, 0) + delta

    def failure(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


def target(workload: str, user: str, delta: int) -> tuple[str, bytes, int]:
    """(path, body, credits this request adds) for one request of ``workload``; builds only
    that one request (this runs per request, on the cores the service is measured on)."""
    match workload:
        case "baseline.noop":
            return "/baseline/noop", b"", 0
        case "simple.read" | "simple.durableRead":
            return "/" + workload.replace(".", "/"), json.dumps(user).encode(), 0
        case "keyed.update" | "keyed.updateConditional":
            handler = workload.removeprefix("keyed.")
            return f"/keyed/{user}/{handler}", str(delta).encode(), delta
        case "idempotency.update" | "twoPhaseCommit.update":
            body = json.dumps({"userId": user, "addCredits": delta}).encode()
            return "/" + workload.replace(".", "/"), body, delta
    raise ValueError(f"unknown workload {workload!r}")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
    }
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, b""


async def http_worker(
    spec: Spec, out: PythonLoadOutcome, deadline: float, rng: random.Random
) -> None:
    url = urlsplit(spec.ingress_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            user = rng.choice(spec.users)
            path, body, delta = target(spec.workload, user, spec.delta)
            content_type = b"Content-Type: application/json\r\n" if body else b""
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
                + content_type
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            started = time.perf_counter()
            try:
                writer.write(request)
                status, answer = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                # The outcome is unknown; the ledger check will say whether it applied.
                out.failure(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status == 200:
                out.success(user, delta, started)
            else:
                out.failure(f"HTTP {status}: {answer.decode(errors='replace')}")
    finally:
        writer.close()


async def direct_worker(
    pool: Any, spec: Spec, out: PythonLoadOutcome, deadline: float, rng: random.Random
) -> None:
    from dbpatterns.patterns.users import ADD_CREDITS

    while time.perf_counter() < deadline:
        user = rng.choice(spec.users)
        started = time.perf_counter()
        try:
            async with pool.connection() as conn:
                await conn.execute(ADD_CREDITS, {"add": spec.delta, "user_id": user})
        except Exception as exc:
            out.failure(f"{type(exc).__name__}: {exc}")
            continue
        out.success(user, spec.delta, started)


async def run(spec: Spec) -> PythonLoadOutcome:
    out = PythonLoadOutcome()
    rng = random.Random(spec.seed)
    pool = None
    if spec.workload == "direct":
        from dbpatterns.config import Settings
        from dbpatterns.service.db import create_pool

        settings = Settings(database_url=spec.database_url, pool_size=spec.pool_size)
        pool = create_pool(settings, name=DIRECT_APPLICATION_NAME)
        await pool.open(wait=True)
        backends_before = await backend_cpu(pool) if spec.local_postgres else {}
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + spec.duration
    workers = [
        direct_worker(pool, spec, out, deadline, random.Random(rng.random()))
        if pool is not None
        else http_worker(spec, out, deadline, random.Random(rng.random()))
        for _ in range(spec.concurrency)
    ]
    await asyncio.gather(*workers)
    out.elapsed = time.perf_counter() - started
    if pool is not None:
        out.client_cpu_seconds = time.process_time() - client_cpu_before
        if spec.local_postgres:
            backends_after = await backend_cpu(pool)
            out.backend_cpu_seconds = {
                pid: t - backends_before.get(pid, 0.0) for pid, t in backends_after.items()
            }
        await pool.close()
    return out


async def backend_cpu(pool: Any) -> dict[int, float]:
    """CPU seconds so far of each Postgres backend serving this process's pool (same host)."""
    from dbpatterns.stack.procfs import cpu_seconds

    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (DIRECT_APPLICATION_NAME,),
        )
        pids = [int(row[0]) for row in await cursor.fetchall()]
    return {pid: cpu_seconds(pid) for pid in pids}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = Spec(**json.loads(args[0]))
    outcome = asyncio.run(run(spec))
    json.dump(asdict(outcome), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
