"""Where the chaos stack starts its child processes: a few long-lived threads.

Every child process is started from these long-lived threads: the children ask the kernel for a
signal when their parent dies (PR_SET_PDEATHSIG), and "parent" there means the *thread* that
forked them. A child forked from a short-lived thread would be sent SIGTERM the moment that
thread ends.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Spawner:
    """Runs each start of a child process on one of a few long-lived threads."""

    def __init__(self) -> None:
        self._threads = ThreadPoolExecutor(4, thread_name_prefix="chaos-spawner")

    def run(self, start: Callable[[], T]) -> T:
        """Run ``start`` (which starts a child process) on a long-lived spawner thread."""
        return self._threads.submit(start).result()

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
