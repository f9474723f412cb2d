"""The network of a real deployment on the bench's links: ``./lab bench --rtt-ms N``.

In a deployment the service, Postgres and restate-server sit on different hosts; in the lab
they share loopback, where a round trip costs almost nothing. ``delayed_network`` puts a round
trip of N ms on the two links a deployment has on the network, and counts the round trips that
cross each, by starting beside the running lab:

* a delay proxy (``dbpatterns.measure.delay_proxy``, a process of its own) with two routes:
  ``postgres``, the service's connections to the lab's Postgres, and ``restate``,
  restate-server's connections to the service (restate-server is the client there: it opens
  the HTTP/2 connections and sends each call; the service answers);
* a service process of the bench's own (the lab's code and settings) whose database URL is the
  proxy's ``postgres`` route, registered with the lab's restate-server at the proxy's
  ``restate`` route. The newest deployment takes the calls, so every call the bench makes
  crosses the proxy both ways, and every statement the handlers run crosses it too.

The bench measures this service's CPU instead of the lab's, and the proxy's beside it. The lab's
own service is left as it runs (``./lab up`` watches it; the bench does not stop it) and takes
the calls again once the bench's deployment is removed on the way out. The bench's service
runs no janitor (the lab's still sweeps), so that no statement of a sweep counts for a call.

The setup of a connection (Postgres's startup and authentication, HTTP/2's preface and
settings) costs round trips that belong to no call, so none may happen during a run. The
service opens its pool in the background once it starts: ``delayed_network`` waits until every
pooled connection crossed the proxy and the ``postgres`` route fell quiet. restate-server opens
a connection to the service for each partition that invokes it, and a call lands on a random
partition unless it is keyed: ``warm_up`` makes no-op calls until ``STABLE_CALLS`` in a row
opened none.

Not behind the proxy: the load (wrk or the Python load) reaches the ingress directly, and the
bench's own look at the database (ledger, transaction ids, ``pg_stat_statements``) is the
observer's, not a link of the deployment. The ``direct`` baseline's Python load plays the
service's part, so it connects through the ``postgres`` route (``database_url``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from dbpatterns.config import Settings
from dbpatterns.measure.delay_proxy import DelayProxy, RouteCounts
from dbpatterns.stack import LabError, ServiceProcess, free_port, register_deployment
from dbpatterns.stack.client import Ingress

#: The proxy's routes: to Postgres from the service, to the service from restate-server.
POSTGRES, RESTATE = "postgres", "restate"
#: Warm-up: no-op calls in a row that opened no connection, and the most calls it makes.
STABLE_CALLS = 50
MAX_WARMUP_CALLS = 2000
#: The service's pool is open once all its connections crossed the proxy and no round trip
#: crossed the ``postgres`` route for this long (plus the round trip); given up after the second.
POOL_QUIET_S, POOL_OPEN_TIMEOUT_S = 0.5, 60.0


@dataclass(frozen=True)
class DelayedNetwork:
    """The proxy and the bench's service behind it, while they run."""

    rtt_ms: float
    proxy: DelayProxy
    service: ServiceProcess
    #: The lab database through the proxy (libpq form): where the service's part connects.
    database_url: str

    def pids(self) -> dict[str, list[int]]:
        """The processes this network adds to the bench's CPU meter, by part."""
        assert self.service.process is not None
        return {"service": [self.service.process.pid], "proxy": [self.proxy.pid]}

    def counts(self) -> dict[str, RouteCounts]:
        return self.proxy.counts()


def round_trips_between(
    before: dict[str, RouteCounts], after: dict[str, RouteCounts]
) -> dict[str, int]:
    """Round trips on each link from ``before`` to ``after`` (two ``DelayedNetwork.counts``)."""
    return {link: after[link].turns - before[link].turns for link in after}


@contextlib.contextmanager
def delayed_network(
    settings: Settings, rtt_ms: float, say: Callable[[str], None] = print
) -> Iterator[DelayedNetwork]:
    """The proxy and the bench's service, registered with the lab's restate-server for as long
    as the block runs; the deployment is removed and both processes stop afterwards, whatever
    happened in the block."""
    if rtt_ms < 0:
        raise LabError(f"--rtt-ms {rtt_ms:g}", "a round-trip time of 0 ms or more")
    database = settings.db_url
    service_port = free_port(settings.bind_host)
    logs = settings.home / "logs"
    routes = {
        POSTGRES: (database.host or settings.bind_host, database.port or 5432),
        RESTATE: (settings.bind_host, service_port),
    }
    with DelayProxy(rtt_ms, routes, logs / "bench-proxy.log") as proxy:
        database_url = settings.database_url_at(settings.bind_host, proxy.ports[POSTGRES])
        service = ServiceProcess(
            settings.model_copy(
                update={
                    "service_port": service_port,
                    "database_url": database_url,
                    "janitor_interval": timedelta(0),
                }
            ),
            logs / "bench-service.log",
        )
        service.start()
        try:
            wait_for_pool(proxy, settings.pool_size, rtt_ms, service.log_path)
            uri = f"http://{settings.bind_host}:{proxy.ports[RESTATE]}"
            deployment = register_deployment(settings.admin_url, uri)["id"]
            say(
                f"round trip of {rtt_ms:g} ms on each link: restate-server -> {uri} -> the "
                f"bench's service (pid {service.process.pid if service.process else '?'}) -> "
                f"{settings.bind_host}:{proxy.ports[POSTGRES]} -> Postgres; proxy pid {proxy.pid}"
            )
            try:
                yield DelayedNetwork(rtt_ms, proxy, service, database_url)
            finally:
                remove_deployment(settings.admin_url, deployment)
        finally:
            service.stop()


def wait_for_pool(proxy: DelayProxy, pool_size: int, rtt_ms: float, log_path: Path) -> None:
    """Until the service's ``pool_size`` connections to Postgres crossed the proxy and their
    setup is over (the route quiet for ``POOL_QUIET_S`` plus the round trip)."""
    quiet_s = POOL_QUIET_S + rtt_ms / 1000
    give_up = time.monotonic() + POOL_OPEN_TIMEOUT_S
    seen, since = None, time.monotonic()
    while time.monotonic() < give_up:
        counts = proxy.counts()[POSTGRES]
        now = (counts.connections, counts.turns)
        if now != seen:
            seen, since = now, time.monotonic()
        elif counts.connections >= pool_size and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
    raise LabError(
        f"the bench's service did not open its {pool_size} connections to Postgres through the "
        f"delay proxy within {POOL_OPEN_TIMEOUT_S:g} s (seen: {seen})",
        f"see {log_path} and {proxy.log_path}",
    )


def warm_up(network: DelayedNetwork, ingress_url: str) -> int:
    """No-op calls until ``STABLE_CALLS`` in a row opened no new connection from restate-server
    to the service (at most ``MAX_WARMUP_CALLS``); returns how many it made."""
    made = streak = 0
    opened = network.counts()[RESTATE].connections
    with Ingress(ingress_url) as ingress:
        while streak < STABLE_CALLS and made < MAX_WARMUP_CALLS:
            answer = ingress.http.post("/baseline/noop")
            if answer.status_code != 200:
                raise LabError(
                    f"a warm-up call through the delay proxy answered {answer.status_code}: "
                    f"{answer.text}",
                    f"see {network.service.log_path} and {network.proxy.log_path}",
                )
            made += 1
            now = network.counts()[RESTATE].connections
            streak = streak + 1 if now == opened else 0
            opened = now
    return made


def remove_deployment(admin_url: str, deployment: str) -> None:
    """Remove the bench's deployment: the one registered before it takes the calls again."""
    response = httpx.delete(
        f"{admin_url}/deployments/{deployment}", params={"force": "true"}, timeout=10
    )
    if response.status_code >= 300:
        raise LabError(
            f"removing the bench's deployment {deployment} failed: HTTP {response.status_code} "
            f"{response.text}",
            f"remove it by hand: `./lab restate deployments remove {deployment} --force`, or "
            "register the lab's service again",
        )
