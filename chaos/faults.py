"""The faults the chaos harness injects into the parts of its stack, and the counts that prove
they struck.

Faults on the parts other than the service's processes (whose kills and pauses a failpoint
strikes, counted by the service pair, ``chaos.service_pair``): ``kill_restate`` /
``restart_restate`` (SIGKILL, then start on the same data), ``restart_postgres`` (immediate
shutdown, then start: crash recovery), ``terminate_service_connections``
(``pg_terminate_backend`` on the service's sessions), an invocation killed or cancelled through
Restate's admin API, and, in a cluster, a node killed, paused or cut off from its peers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from chaos.network import LoopbackNetwork
from chaos.spawner import Spawner
from dbpatterns.service.db import APPLICATION_NAME
from dbpatterns.stack import LabError, PostgresServer, RestateCluster, RestateServer
from dbpatterns.stack.client import Admin

log = logging.getLogger("chaos")


@dataclass
class FaultCounts:
    """Fault events since the harness started, by kind, apart from their effects.

    Read before and after a cell (``minus``). An *event* is one fault struck once: a process
    killed, a process paused, restate-server killed, Postgres restarted, one call that
    terminates the service's sessions, an invocation killed through Restate. What an event
    caused is counted apart (``sessions_terminated``: one terminate event may end ten sessions).
    Every pause ends one of two ways, and both are counted: the harness resumed it
    (``zombies_resumed``) or the process died while paused (``paused_died``); ``still_paused``
    says how many are neither yet, so ``service_paused == zombies_resumed + paused_died +
    still_paused`` always holds.
    """

    service_killed: int = 0  # a failpoint's kill, seen as an unexpected exit of a serving process
    service_paused: int = 0  # a failpoint's pause, seen as a stopped process
    zombies_resumed: int = 0
    paused_died: int = 0
    restate_killed: int = 0
    postgres_restarted: int = 0
    terminate_events: int = 0
    invocations_killed: int = 0  # through Restate's admin API
    invocations_cancelled: int = 0  # through Restate's admin API
    sessions_terminated: int = 0  # the effect of the terminate events
    nodes_killed: int = 0  # a restate-server node of a cluster, SIGKILL
    nodes_paused: int = 0  # a restate-server node of a cluster, SIGSTOP ...
    nodes_resumed: int = 0  # ... and SIGCONT
    nodes_isolated: int = 0  # cut off from the other nodes and the service ...
    nodes_healed: int = 0  # ... and reachable again

    #: The kinds that are events (``sessions_terminated`` is an effect; a resume ends a pause).
    EVENTS = (
        "service_killed",
        "service_paused",
        "restate_killed",
        "postgres_restarted",
        "terminate_events",
        "invocations_killed",
        "invocations_cancelled",
        "nodes_killed",
        "nodes_paused",
        "nodes_isolated",
    )

    def minus(self, earlier: FaultCounts) -> FaultCounts:
        return FaultCounts(
            **{k: getattr(self, k) - getattr(earlier, k) for k in self.__dataclass_fields__}
        )

    @property
    def still_paused(self) -> int:
        return self.service_paused - self.zombies_resumed - self.paused_died

    def events(self) -> int:
        """Fault events of every kind (not their effects, not the resumes that end pauses)."""
        return sum(getattr(self, k) for k in self.EVENTS)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "still_paused": self.still_paused
        }


def as_cluster(restate: RestateServer | RestateCluster) -> RestateCluster:
    """``restate`` as the cluster it must be, or a LabError that says how to get one."""
    if not isinstance(restate, RestateCluster):
        raise LabError("this chaos stack runs a single restate-server", "create it with nodes=3")
    return restate


class FaultInjector:
    """Strikes each fault on the part it names, and counts it in ``counts`` as it strikes."""

    def __init__(
        self,
        counts: FaultCounts,
        postgres: PostgresServer,
        restate: RestateServer | RestateCluster,
        network: LoopbackNetwork | None,
        spawner: Spawner,
        *,
        database_url: str,
        admin: Callable[[], Admin],
        start_restate: Callable[[], None],
    ) -> None:
        """``admin``: Restate's admin API as it is now; ``start_restate``: start restate-server
        (or every node) again on its data, as the stack starts it."""
        self.counts = counts
        self.postgres = postgres
        self.restate = restate
        self.network = network
        self._spawner = spawner
        self.database_url = database_url
        self._admin = admin
        self._start_restate = start_restate

    @property
    def cluster(self) -> RestateCluster:
        return as_cluster(self.restate)

    # --- faults on restate-server and Postgres ---------------------------------------------------

    def kill_restate(self) -> None:
        """SIGKILL restate-server (a crash: no shutdown runs)."""
        if isinstance(self.restate, RestateCluster):
            raise LabError("a cluster loses one node at a time: kill_node", "use kill_node")
        if self.restate.process is not None:
            self.restate.process.kill()
        self.counts.restate_killed += 1
        log.warning("restate-server killed")

    def restart_restate(self) -> None:
        self.kill_restate()
        self._start_restate()

    # --- faults on the nodes of a cluster --------------------------------------------------------

    def kill_node(self, name: str) -> None:
        """SIGKILL one restate-server node of the cluster."""
        self.cluster.kill(name)
        self.counts.nodes_killed += 1
        log.warning("restate node %s killed", name)

    def pause_node(self, name: str) -> None:
        """SIGSTOP one node: it hangs with its connections open, a cluster-level zombie."""
        self.cluster.pause(name)
        self.counts.nodes_paused += 1
        log.warning("restate node %s paused", name)

    def resume_node(self, name: str) -> None:
        self.cluster.resume(name)
        self.counts.nodes_resumed += 1
        log.warning("restate node %s resumed", name)

    def isolate_node(self, name: str) -> int:
        """Partition one node from the other nodes and from the service (``LoopbackNetwork``);
        returns how many of its connections went silent."""
        if self.network is None:
            raise LabError("this chaos stack has no network to partition", "use nodes=3")
        held = self.network.isolate(name)
        self.counts.nodes_isolated += 1
        log.warning("restate node %s cut off from its peers and the service", name)
        return held

    def heal_node(self, name: str) -> None:
        assert self.network is not None
        self.network.heal(name)
        self.counts.nodes_healed += 1
        log.warning("restate node %s reachable again", name)

    def restart_node(self, name: str) -> None:
        """Start a killed node again on its data; return once the cluster is ready again."""
        self._spawner.run(lambda: self.cluster.restart(name))
        if not self.cluster.settled():
            raise LabError(f"the cluster did not settle after {name} restarted", "")

    # --- faults on Postgres and the invocations --------------------------------------------------

    def restart_postgres(self) -> None:
        """Immediate shutdown (no checkpoint, every session cut), then start: crash recovery."""
        self.postgres.crash()
        self.counts.postgres_restarted += 1
        log.warning("postgres stopped (immediate), starting again")
        self._spawner.run(self.postgres.start)

    def kill_invocation(self, invocation_id: str) -> None:
        """Kill an invocation through Restate's admin API (``restate invocations kill``)."""
        response = self._admin().http.patch(f"/invocations/{invocation_id}/kill")
        response.raise_for_status()
        self.counts.invocations_killed += 1
        log.warning("invocation %s killed through the admin API", invocation_id)

    def cancel_invocation(self, invocation_id: str) -> None:
        """Cancel an invocation through Restate's admin API (``restate invocations cancel``)."""
        response = self._admin().http.patch(f"/invocations/{invocation_id}/cancel")
        response.raise_for_status()
        self.counts.invocations_cancelled += 1
        log.warning("invocation %s cancelled through the admin API", invocation_id)

    def terminate_service_connections(self) -> int:
        """``pg_terminate_backend`` on every session of the service; returns how many."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (APPLICATION_NAME,),
            ).fetchone()
        count = int(row[0]) if row else 0
        self.counts.terminate_events += 1
        self.counts.sessions_terminated += count
        log.warning("terminated %d service connection(s)", count)
        return count
