"""Where the service's CPU goes under load: py-spy samples it while wrk drives one workload.

``./lab profile keyed.update`` runs the workload against the running lab (as ``./lab bench``
does) and has py-spy sample the service process meanwhile. The samples are kept as collapsed
stacks (``profile-<workload>.txt``, the input of any flame graph tool) and summarised by where
the sampled frame is, on its own (self time): HTTP/2 framing, hypercorn, the Restate SDK,
psycopg, logging, the lab's own code, and asyncio with its socket calls; then the busiest lines.
Threads of a thread pool waiting for work, which py-spy can mistake for busy ones, are dropped.

py-spy sees Python frames only. Beside it, the CPU each thread of the service used over the
sampled window is read from ``/proc/<pid>/task`` and divided by the calls the load made in that
window (its mean rate times the window): that is where granian's HTTP/2 work, done by threads
that run no Python, shows up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dbpatterns.config import Settings
from dbpatterns.measure import bench, tables, wrkload
from dbpatterns.stack import LabError, procfs

#: Where a sampled frame's file lies, by the component it belongs to (first match wins).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP/2 (h2, hpack, hyperframe, priority)", ("h2/", "hpack/", "hyperframe/", "priority/")),
    ("hypercorn", ("hypercorn/",)),
    ("granian", ("granian/",)),
    ("Restate SDK", ("restate/",)),
    ("psycopg", ("psycopg/", "psycopg_pool/")),
    ("logging", ("logging/",)),
    ("the lab's handlers", ("dbpatterns/",)),
    ("asyncio and socket calls", ("asyncio/", "selectors.py", "socket.py")),
)
IDLE_WORKER = "concurrent/futures/thread.py:81"  # a pool thread blocked on its queue
#: A sample of a thread with no Python frame: native code on a thread Python knows (granian's
#: Rust threads, which take the GIL to hand requests to the event loop).
NATIVE = "(no Python frame: native code)"


@dataclass
class Profile:
    samples: int
    by_component: dict[str, int]
    top_lines: list[tuple[str, int]]
    #: CPU ms per call by thread name over the sampled window (empty: not measured).
    threads_ms_per_call: dict[str, float] = field(default_factory=dict)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) the live threads of ``pid`` have used, summed by thread
    name; the thread that runs the event loop (the process's first) is named ``main``."""
    used: dict[str, float] = {}
    for tid, stat in procfs.threads(pid).items():
        name = "main" if tid == pid else stat.name
        used[name] = used.get(name, 0.0) + stat.cpu_seconds
    return used


def component(frame: str) -> str:
    if frame == NATIVE:
        return "native code (granian's threads)"
    for name, markers in COMPONENTS:
        if any(m in frame for m in markers):
            return name
    return "other"


def summarise(collapsed: Iterable[str], top: int = 12) -> Profile:
    """Collapsed stacks (``frame;frame;... count`` per line, outermost first) by self time."""
    by_component: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    samples = 0
    for line in collapsed:
        if not line.strip():
            continue
        stack, count = line.rstrip("\n").rsplit(" ", 1)
        leaf = stack.split(";")[-1] or NATIVE
        if IDLE_WORKER in leaf:
            continue
        n = int(count)
        samples += n
        by_component[component(leaf)] += n
        lines[leaf] += n
    return Profile(samples, dict(by_component.most_common()), lines.most_common(top))


def markdown(profile: Profile, title: str) -> str:
    share = max(profile.samples, 1)
    out = [f"### {title}", "", f"{profile.samples} samples of the service's busy threads.", ""]
    out += [
        tables.markdown(
            ["where the CPU is (self time)", "share"],
            ([name, f"{n / share:.1%}"] for name, n in profile.by_component.items()),
        ),
        "",
        tables.markdown(
            ["busiest lines", "share"],
            ([f"`{leaf}`", f"{n / share:.1%}"] for leaf, n in profile.top_lines),
        ),
    ]
    if profile.threads_ms_per_call:
        total = sum(profile.threads_ms_per_call.values())
        threads = [[name, f"{ms:.2f}"] for name, ms in profile.threads_ms_per_call.items()]
        out += [
            "",
            tables.markdown(
                ["thread (from /proc, the sampled window)", "CPU ms per call"],
                [*threads, ["all", f"{total:.2f}"]],
            ),
        ]
    return "\n".join(out) + "\n"


def record(
    settings: Settings,
    workload: str,
    concurrency: int,
    duration: float,
    out_dir: Path,
    rate: int = 200,
) -> tuple[Profile, wrkload.WrkOutcome, Path]:
    """Drive ``workload`` for ``duration`` s and sample the service for all but its first and
    last two seconds."""
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when its bin is not on PATH
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise LabError("py-spy is not installed", "it comes with the lab's dev packages")
    if duration < 8:
        raise LabError("profile for at least 8 s: the first and last 2 s are not sampled")
    service = bench.lab_pids(settings).get("service")
    if not service:
        raise LabError("the running lab has no service process to profile")
    users = bench.prepare_users(settings.libpq_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"profile-{workload}.txt"
    result: list[wrkload.WrkOutcome] = []
    load = threading.Thread(
        target=lambda: result.append(
            wrkload.run(workload, settings.ingress_url, users, concurrency, duration)
        )
    )
    load.start()
    try:
        time.sleep(2)  # past the load's start
        cpu_before, window_start = thread_cpu(service[0]), time.monotonic()
        sampled = subprocess.run(
            [py_spy, "record", "--pid", str(service[0]), "--rate", str(rate),
             "--duration", str(int(duration - 4)), "--format", "raw", "--output", str(raw),
             "--nonblocking"],
            capture_output=True, text=True, timeout=duration + 60,
        )  # fmt: skip
        cpu_after, window = thread_cpu(service[0]), time.monotonic() - window_start
    finally:
        load.join()
    if sampled.returncode != 0 or not raw.exists():
        raise LabError(f"py-spy failed:\n{sampled.stderr[-2000:]}")
    if not result:
        raise LabError("the load did not finish")
    with raw.open() as stacks:
        profile = summarise(stacks)
    calls = result[0].ok / result[0].elapsed * window
    if calls > 0:
        used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
        profile.threads_ms_per_call = {
            name: 1000 * s / calls for name, s in sorted(used.items(), key=lambda kv: -kv[1])
        }
    return profile, result[0], raw
