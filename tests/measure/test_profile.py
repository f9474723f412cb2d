"""The profile summary: each sample is booked once, to the component its innermost frame lies
in, and pool threads waiting for work are not counted as busy; the CPU of threads py-spy cannot
see (no Python on them) is read per thread."""

from __future__ import annotations

import os
import threading
import time

from dbpatterns.measure import profile

STACKS = [
    "run (asyncio/base_events.py:1);_flush (hypercorn/protocol/h2.py:9);"
    "write (asyncio/selector_events.py:1057) 30",
    "run (asyncio/base_events.py:1);send (h2/connection.py:5);serialize (hyperframe/frame.py:2) 20",
    "run (asyncio/base_events.py:1);app (restate/server.py:324) 10",
    "run (asyncio/base_events.py:1);update (dbpatterns/patterns/keyed.py:90);"
    "execute (psycopg/cursor_async.py:3) 15",
    "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 500",
    " 5",  # a thread with no Python frame
    "",
]


def test_each_sample_counts_once_for_the_component_of_its_innermost_frame() -> None:
    found = profile.summarise(STACKS)
    assert found.samples == 80  # the idle pool thread's 500 are not busy time
    assert found.by_component == {
        "asyncio and socket calls": 30,
        "HTTP/2 (h2, hpack, hyperframe, priority)": 20,
        "psycopg": 15,
        "Restate SDK": 10,
        "native code (granian's threads)": 5,
    }
    assert found.top_lines[0] == ("write (asyncio/selector_events.py:1057)", 30)
    text = profile.markdown(found, "test")
    assert "| asyncio and socket calls | 37.5% |" in text


def test_thread_cpu_books_a_busy_thread_apart_from_the_main_one() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        seen = profile.thread_cpu(os.getpid())
        while sum(v for k, v in seen.items() if k != "main") < 0.2:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)  # the main thread sleeps: its CPU stays low
            seen = profile.thread_cpu(os.getpid())
    finally:
        stop.set()
        worker.join()
    assert "main" in seen


def test_the_thread_table_adds_up_to_its_total() -> None:
    found = profile.summarise(STACKS)
    found.threads_ms_per_call = {"main": 0.5, "granian-worker": 0.25}
    text = profile.markdown(found, "test")
    assert "| main | 0.50 |" in text
    assert "| granian-worker | 0.25 |" in text
    assert "| all | 0.75 |" in text
