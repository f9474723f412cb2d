"""Where the service's CPU goes under load: py-spy samples it while wrk drives one workload.

``./lab profile keyed.update`` runs the workload against the running lab (as ``./lab bench``
does) and has py-spy sample the service process meanwhile. The samples are kept as collapsed
stacks (``profile-<workload>.txt``, the input of any flame graph tool) and summarised by where
the sampled frame is, on its own (self time): HTTP/2 framing, hypercorn, the Restate SDK,
psycopg, logging, the lab's own code, and asyncio with its socket calls; then the busiest lines.
Threads of a thread pool waiting for work, which py-spy can mistake for busy ones, are dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dbpatterns import bench, wrkload
from dbpatterns.config import Settings
from dbpatterns.stack import LabError

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


@dataclass
class Profile:
    samples: int
    by_component: dict[str, int]
    top_lines: list[tuple[str, int]]


def component(frame: str) -> str:
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
        leaf = stack.split(";")[-1]
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
    out += ["| where the CPU is (self time) | share |", "| --- | --- |"]
    out += [f"| {name} | {n / share:.1%} |" for name, n in profile.by_component.items()]
    out += ["", "| busiest lines | share |", "| --- | --- |"]
    out += [f"| `{leaf}` | {n / share:.1%} |" for leaf, n in profile.top_lines]
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
        sampled = subprocess.run(
            [py_spy, "record", "--pid", str(service[0]), "--rate", str(rate),
             "--duration", str(int(duration - 4)), "--format", "raw", "--output", str(raw),
             "--nonblocking"],
            capture_output=True, text=True, timeout=duration + 60,
        )  # fmt: skip
    finally:
        load.join()
    if sampled.returncode != 0 or not raw.exists():
        raise LabError(f"py-spy failed:\n{sampled.stderr[-2000:]}")
    if not result:
        raise LabError("the load did not finish")
    with raw.open() as stacks:
        profile = summarise(stacks)
    return profile, result[0], raw
