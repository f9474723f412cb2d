"""The chaos suite's own stack, once per session: Postgres, restate-server with short timeouts,
two service processes behind a switchable proxy (see ``chaos.stack``); and, for the
node-fault cells, one with a three-node cluster.

It is separate from ``tests/conftest.py``'s stack: the chaos suite kills, pauses and restarts
its parts. Cells run one after another on it; each takes fresh users, so no cell sees another's
state.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.provoke import ZombieCut
from chaos.runner import CellRunner
from chaos.stack import SOAK_TOKEN_TTL, ChaosStack
from chaos.workload import Resolver


@pytest.fixture(scope="session")
def chaos_stack() -> Iterator[ChaosStack]:
    stack = ChaosStack.create()
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def runner(chaos_stack: ChaosStack) -> Iterator[CellRunner]:
    """Zombies are cut off from Restate at once here (``ZombieCut.AT_ONCE``): the zombie sees
    the same as when Restate gives up by its own timeouts, about 8 s later, which the committed
    runs (``./lab chaos``) wait out for every cell and these tests for the cells marked
    ``restate_timeout`` (``faithful_cut``)."""
    resolver = Resolver(chaos_stack.ingress_urls)
    try:
        yield CellRunner(chaos_stack, resolver, seed=20261123, zombie_cut=ZombieCut.AT_ONCE)
    finally:
        resolver.close()


@pytest.fixture
def faithful_cut(runner: CellRunner) -> Iterator[CellRunner]:
    """The runner for a zombie cell that waits until Restate gives up on the paused attempt by
    its own timeouts, as a real partition or a hung process would make it."""
    runner.zombie_cut = ZombieCut.RESTATE_TIMEOUT
    try:
        yield runner
    finally:
        runner.zombie_cut = ZombieCut.AT_ONCE


@pytest.fixture(scope="module")
def cluster_runner() -> Iterator[CellRunner]:
    """The same stack with a three-node Restate cluster instead of one restate-server, for the
    node-fault cells; the workload goes through every node's ingress."""
    stack = ChaosStack.create(SOAK_TOKEN_TTL, nodes=3)  # calls outlive a failover
    stack.start()
    resolver = Resolver(stack.ingress_urls)
    try:
        yield CellRunner(stack, resolver, seed=20261204)
    finally:
        resolver.close()
        stack.stop()
