"""The profile summary: each sample is booked once, to the component its innermost frame lies
in, and pool threads waiting for work are not counted as busy."""

from __future__ import annotations

from dbpatterns import profile

STACKS = [
    "run (asyncio/base_events.py:1);_flush (hypercorn/protocol/h2.py:9);"
    "write (asyncio/selector_events.py:1057) 30",
    "run (asyncio/base_events.py:1);send (h2/connection.py:5);serialize (hyperframe/frame.py:2) 20",
    "run (asyncio/base_events.py:1);app (restate/server.py:324) 10",
    "run (asyncio/base_events.py:1);update (dbpatterns/patterns/keyed.py:90);"
    "execute (psycopg/cursor_async.py:3) 15",
    "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 500",
    "",
]


def test_each_sample_counts_once_for_the_component_of_its_innermost_frame() -> None:
    found = profile.summarise(STACKS)
    assert found.samples == 75  # the idle pool thread's 500 are not busy time
    assert found.by_component == {
        "asyncio and socket calls": 30,
        "HTTP/2 (h2, hpack, hyperframe, priority)": 20,
        "psycopg": 15,
        "Restate SDK": 10,
    }
    assert found.top_lines[0] == ("write (asyncio/selector_events.py:1057)", 30)
    text = profile.markdown(found, "test")
    assert "| asyncio and socket calls | 40.0% |" in text
