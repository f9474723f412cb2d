"""``./lab bench --rtt-ms N`` puts the round trip it was asked for on the deployment's links and
counts their round trips (``dbpatterns/measure/bench_network.py``): a ``SELECT 1`` and a no-op
call through Restate each take at least their round trips' worth of the delay, and the proxy
counts exactly the round trips each makes. Against a restate-server and a service of the
module's own (the lab's stand-ins: the bench registers its service in front of theirs) and the
session's Postgres. Timings are lower bounds, which a loaded machine cannot break; the one
upper bound is the least of several statements, against twice the round trip."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from dbpatterns.config import Settings
from dbpatterns.measure import bench
from dbpatterns.measure.bench_network import (
    POSTGRES,
    RESTATE,
    DelayedNetwork,
    delayed_network,
    round_trips_between,
)
from tests.conftest import DatabaseEndpoint, SideStack, side_stack

RTT_MS = 20.0


@pytest.fixture(scope="module")
def lab(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideStack]:
    with side_stack(settings, tmp_path_factory.mktemp("rtt-lab")) as side:
        yield side


@pytest.fixture(scope="module")
def network(lab: SideStack) -> Iterator[DelayedNetwork]:
    with delayed_network(lab.settings, RTT_MS, say=lambda _: None) as delayed:
        yield delayed


def timed_select_1(network: DelayedNetwork, *, autocommit: bool) -> tuple[float, dict[str, int]]:
    """One ``SELECT 1`` on a fresh connection through the proxy: ms, round trips by link."""
    with psycopg.connect(network.database_url, autocommit=autocommit) as conn:
        before = network.counts()
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        took = (time.perf_counter() - started) * 1000
        return took, round_trips_between(before, network.counts())


def test_a_select_1_in_autocommit_is_one_round_trip_that_waits_the_rtt(
    network: DelayedNetwork,
) -> None:
    # psycopg sends Parse, Bind, Describe, Execute and Sync in one write; Postgres answers them
    # in one go.
    runs = [timed_select_1(network, autocommit=True) for _ in range(5)]
    assert [trips for _, trips in runs] == [{POSTGRES: 1, RESTATE: 0}] * 5
    took = [ms for ms, _ in runs]
    assert min(took) >= RTT_MS, took
    assert min(took) < 2 * RTT_MS, took  # a round trip of N ms, not N each way


def test_a_select_1_outside_autocommit_waits_for_psycopgs_begin_first(
    network: DelayedNetwork,
) -> None:
    took, trips = timed_select_1(network, autocommit=False)
    assert trips == {POSTGRES: 2, RESTATE: 0}  # BEGIN alone, then the statement
    assert took >= 2 * RTT_MS


def test_a_noop_call_through_restate_is_two_round_trips_that_wait_the_rtt_each(
    lab: SideStack, network: DelayedNetwork
) -> None:
    """Seen on the wire (restate-server 1.7.12, the SDK 1.3 under granian): restate-server
    sends the call (HEADERS, the start message and the input), the service answers with its
    response headers, the output and the end message; then restate-server ends its request
    stream and the service ends its response stream, and only then does the caller get its
    answer. A call whose partition had no connection to the service yet pays for its setup
    too: the one measured is the first over an open connection."""
    for _ in range(300):
        before = network.counts()
        started = time.perf_counter()
        answer = lab.ingress.http.post("/baseline/noop")
        took = (time.perf_counter() - started) * 1000
        after = network.counts()
        assert answer.status_code == 200, answer.text
        if after[RESTATE].connections == before[RESTATE].connections:
            break
    else:
        pytest.fail("every call opened a connection to the service")
    assert round_trips_between(before, after) == {POSTGRES: 0, RESTATE: 2}
    assert took >= 2 * RTT_MS


def test_the_bench_behind_the_proxy_counts_round_trips_per_call_and_the_proxys_cpu(
    lab: SideStack, postgres: DatabaseEndpoint
) -> None:
    pids = {"restate": lab.restate.process.pid} if lab.restate.process else {}
    if postgres.server and postgres.server.process:
        pids["postgres"] = postgres.server.process.pid
    names = ("direct", "baseline.noop", "keyed.update")
    registered = {d["id"] for d in lab.admin.deployments()}
    results = bench.benchmark(
        lab.settings,
        concurrencies=[1],
        duration=1.0,
        workloads=[w for w in bench.WORKLOADS if w.name in names],
        distributions=["spread"],
        pids=pids,
        rtt_ms=2.0,
        say=lambda _: None,
    )
    by_name = {r.workload: r for r in results}
    for r in results:
        assert r.ops > 0
        assert r.errors == 0, r.error_samples
        assert r.ledger_exact
        assert r.round_trips_per_op is not None
        assert r.cpu_ms_per_op["proxy"] > 0
    trips = {name: r.round_trips_per_op for name, r in by_name.items()}
    # Over connections the warm-up opened: two round trips per no-op call, one more for the
    # durable step; psycopg spends one more, once per pooled connection, preparing a statement
    # on its fifth run there. `direct`'s load opens its pool during its run: the setup of its
    # connections counts for its calls, the more so the fewer calls a run makes.
    assert trips["baseline.noop"] == {POSTGRES: 0, RESTATE: 2}
    keyed = trips["keyed.update"]
    assert keyed is not None
    assert keyed[RESTATE] == 3
    assert 1 <= keyed[POSTGRES] <= 1.5
    direct = trips["direct"]
    assert direct is not None
    assert direct[RESTATE] == 0
    assert direct[POSTGRES] >= 1
    # The bench's deployment is gone again: the one before it takes the calls.
    assert {d["id"] for d in lab.admin.deployments()} == registered
