"""A Restate cluster on one machine: three restate-server nodes (``Settings.restate_nodes``) on
loopback under one cluster name. n1 provisions the cluster on its first start; n2 and n3 join it.
Every node runs every role: it is a member of the replicated metadata store (three copies, a
majority of two decides), a log server of the replicated loglet (each record on two nodes,
``default-replication = 2``), a worker (each partition has a leader and a follower on two
nodes), and it serves the ingress and the admin API. Each node has its own base dir
(``<home>/cluster/nN``), log (``<home>/logs/restate-nN.log``) and ports
(``Settings.restate_ports``: n1 on 21122 node, 21070 admin, 21080 ingress by default).
``RestateCluster.start`` returns once every node answers, all are metadata members and every
partition has a leader (about 10 s after the first start).

What survives: one node killed (SIGKILL) or hung (SIGSTOP). The metadata keeps its majority,
every record has a second copy, and each partition the node led is taken over by its follower;
calls through the other nodes' ingress go on, a call meanwhile waits instead of failing
(measured: 2-6 s after a kill, 4-22 s after a SIGSTOP, which peers notice only by timeouts).
Two nodes down stop the cluster. A node started again on its base dir rejoins as itself (its
node id is forced: n<i> is N<i>).

Which node leads which partition is told by ``restatectl`` (pinned in package.json) from the
cluster's partition table; restate-server 1.7.12's admin API, its SQL (``sys_*`` tables) and the
``restate`` CLI do not say.

One module per concern: ``cluster_nodes`` (each node's address, config and process),
``partitions`` (who leads which partition, who is a metadata member: restatectl and the admin
API), and this one, the cluster as one: started, stopped, faulted and asked for its status.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from dbpatterns.config import Settings
from dbpatterns.service import identity
from dbpatterns.stack.cluster_nodes import (
    CLUSTER_NAME,
    REPLICATION,
    ClusterNode,
    node_addresses,
)
from dbpatterns.stack.partitions import Partition, metadata_members, read_partitions
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    pid_alive,
    pid_stopped,
    tail,
    wait_until,
)
from dbpatterns.stack.restate import find_restate_binary

NodeAction = Literal["kill", "pause", "resume", "restart"]


@dataclass(frozen=True)
class NodeEvent:
    """What a fault helper did, to which process, when: the proof a test's fault happened."""

    action: NodeAction
    node: str
    pid: int
    at: float  # time.time()


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str  # "provisions the cluster" (n1) or "joins n1's cluster"
    pid: int | None  # None: not running
    healthy: bool  # admin API and ingress answer their health checks
    metadata_member: bool | None  # None: no node answered the question
    leads: list[int] | None  # the partitions it leads; None: unknown
    admin_url: str
    ingress_url: str
    node_url: str


@dataclass(frozen=True)
class ClusterStatus:
    cluster_name: str
    nodes: list[NodeStatus]
    #: partition id -> the node leading it (None: no leader now); None: nobody could tell.
    leaders: dict[int, str | None] | None
    leaders_source: str  # where ``leaders`` came from, or why it is unknown

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RestateCluster:
    """The nodes of ``settings.restate_nodes``, started and stopped together, with fault
    helpers that record what they did in ``events``."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        advertised: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: ``RESTATE_*`` settings every node gets over its config (the chaos harness
        shortens the invoker's timeouts so); ``advertised``: node name -> the URL its peers and
        the metadata clients dial instead of its own node port (the chaos harness's network)."""
        if settings.restate_nodes < REPLICATION:
            raise LabError(
                f"a cluster needs at least {REPLICATION} nodes (replication {REPLICATION}), "
                f"not {settings.restate_nodes}",
                "set DBPATTERNS_RESTATE_NODES to 3 (or 1 for a single restate-server)",
            )
        self.settings = settings
        self.env = dict(env or {})
        addresses = node_addresses(settings)
        self.nodes = [
            ClusterNode(settings, address, addresses, advertised) for address in addresses
        ]
        self.events: list[NodeEvent] = []

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(
            f"no cluster node {name!r}", f"the nodes are {', '.join(n.name for n in self.nodes)}"
        )

    def ports(self) -> dict[str, tuple[str, int]]:
        """Every port the nodes listen on, named for a busy-port message."""
        return {
            f"restate {node.name} {what}": (node.address.host, port)
            for node in self.nodes
            for what, port in node.address.ports._asdict().items()
        }

    def processes(self) -> list[ChildProcess]:
        return [n.process for n in self.nodes if n.process is not None]

    # --- start, health, stop ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every node at once; return when the cluster is ``ready``. If it is not within
        ``timeout``, stop them all and say which node failed, with its log. A crash in between
        leaves nothing running (each node dies with its parent); the base dirs keep what was
        provisioned, and the next start goes on from there."""
        find_restate_binary("restatectl", "restatectl")  # tells when partitions are led
        for node in self.nodes:
            node.spawn(*self._launch_args(), self.env)
        if not wait_until(self.ready, timeout, interval=0.2, alive=self._all_alive):
            failed = [n for n in self.nodes if not n.alive() or not n.answers()] or self.nodes
            self.stop()
            raise LabError(
                "the Restate cluster did not come up: "
                + "; ".join(f"{n.name} says:\n{tail(n.log_path)}" for n in failed),
                f"see {', '.join(str(n.log_path) for n in failed)}",
            )

    def _launch_args(self) -> tuple[Path, Path | None]:
        """The restate-server binary, and the request identity key every node signs with (the
        service checks the signature; the key pair is the single server's, made once)."""
        binary = find_restate_binary("restate-server", "restate-server", self.settings.restate_bin)
        if not self.settings.request_identity:
            return binary, None
        key_file, _ = identity.ensure_key_pair(self.settings.identity_dir)
        return binary, key_file

    def _all_alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def healthy(self) -> bool:
        """Does every node answer its health checks?"""
        return all(node.answers() for node in self.nodes)

    def ready(self) -> bool:
        """Every node healthy and a member of the replicated metadata store, and every partition
        led (measured: about 10 s after the first start, 6 s after a restart of all)."""
        if not self.healthy():
            return False
        if metadata_members(self.nodes[0].address) != {n.name for n in self.nodes}:
            return False
        partitions, _ = read_partitions([n.address for n in self.nodes])
        if not partitions:
            return False
        return all(p.leader is not None for p in partitions)

    def partitions(self, seen_from: Sequence[str] | None = None) -> list[Partition] | None:
        """The partition table; None if nobody can tell. ``seen_from``: ask only these nodes
        (a node cut off from the others still believes what it last knew)."""
        asked = [n for n in self.nodes if seen_from is None or n.name in seen_from]
        partitions, _ = read_partitions([n.address for n in asked if n.answers()])
        return partitions

    def leaders(self, seen_from: Sequence[str] | None = None) -> dict[int, str | None] | None:
        """Partition id -> the node leading it now; None if nobody can tell."""
        partitions = self.partitions(seen_from)
        return None if partitions is None else {p.id: p.leader for p in partitions}

    def settled(self, quiet: float = 6.0, timeout: float = 90.0) -> bool:
        """Wait until the cluster is ``ready`` and no partition has changed leader for
        ``quiet`` seconds. A node started again takes leadership back for a while after it
        answers, and each move aborts the attempts in flight on the partition it leaves."""
        give_up = time.monotonic() + timeout
        last: dict[int, str | None] | None = None
        since = time.monotonic()
        while time.monotonic() < give_up:
            now = self.leaders() if self.ready() else None
            if now is None or now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """SIGTERM every node at once (one by one, the last ones would wait for a metadata
        majority that is already gone); data stays in the base dirs."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(ClusterNode.stop, self.nodes))

    # --- faults -------------------------------------------------------------------------------

    def kill(self, name: str) -> NodeEvent:
        """SIGKILL node ``name``, as a crash would: no shutdown runs. What it had written to its
        RocksDB WAL survives in its base dir; its partitions move to their followers."""
        process = self._running(name)
        process.kill()
        return self._record("kill", name, process.pid)

    def pause(self, name: str) -> NodeEvent:
        """SIGSTOP node ``name`` and return once it is stopped: it hangs with its sockets open,
        so peers see timeouts rather than refused connections, until ``resume``."""
        process = self._running(name)
        process.pause()
        if not wait_until(lambda: pid_stopped(process.pid), 5, interval=0.01):
            raise LabError(f"cluster node {name} (pid {process.pid}) did not stop on SIGSTOP")
        return self._record("pause", name, process.pid)

    def resume(self, name: str) -> NodeEvent:
        """SIGCONT node ``name``; return once it runs again."""
        process = self._running(name)
        process.resume()
        if not wait_until(lambda: not pid_stopped(process.pid), 5, interval=0.01):
            raise LabError(f"cluster node {name} (pid {process.pid}) did not go on on SIGCONT")
        return self._record("resume", name, process.pid)

    def restart(self, name: str, timeout: float = 60.0) -> NodeEvent:
        """Start node ``name`` again on its base dir (after ``kill``); return when it answers.
        It rejoins as itself and follows until the cluster hands it partitions to lead."""
        node = self.node(name)
        if node.alive():
            raise LabError(f"cluster node {name} still runs (pid {node.pid})", "kill it first")
        process = node.spawn(*self._launch_args(), self.env)
        if not wait_until(node.answers, timeout, interval=0.2, alive=node.alive):
            raise LabError(
                f"cluster node {name} did not come back; its log says:\n{tail(node.log_path)}",
                f"see {node.log_path}",
            )
        return self._record("restart", name, process.pid)

    def _running(self, name: str) -> ChildProcess:
        node = self.node(name)
        if node.process is None or not node.alive():
            raise LabError(f"cluster node {name} is not running", "restart it first")
        return node.process

    def _record(self, action: NodeAction, name: str, pid: int) -> NodeEvent:
        event = NodeEvent(action, name, pid, time.time())
        self.events.append(event)
        return event

    # --- status -------------------------------------------------------------------------------

    def status(self, pids: Mapping[str, int | None] | None = None) -> ClusterStatus:
        """Each node's role, health, pid and addresses, and which node leads which partition.
        ``pids`` (node name -> pid) describe nodes another process started (``./lab status``
        reads them from the state file); by default, this object's own processes."""
        if pids is None:
            pids = {n.name: n.pid for n in self.nodes}
        answering = [n.address for n in self.nodes if n.answers()]
        members = metadata_members(answering[0]) if answering else None
        partitions, source = read_partitions(answering)
        leaders = None if partitions is None else {p.id: p.leader for p in partitions}
        nodes = [
            NodeStatus(
                name=n.name,
                role=n.role,
                pid=pid if (pid := pids.get(n.name)) and pid_alive(pid) else None,
                healthy=n.address in answering,
                metadata_member=None if members is None else n.name in members,
                leads=None
                if leaders is None
                else [p for p, leader in leaders.items() if leader == n.name],
                admin_url=n.address.admin_url,
                ingress_url=n.address.ingress_url,
                node_url=n.address.node_url,
            )
            for n in self.nodes
        ]
        return ClusterStatus(CLUSTER_NAME, nodes, leaders, source)

    def leader_of(self, partition_key: int) -> str | None:
        """The node leading the partition that holds ``partition_key`` (a virtual object key's
        hash, as the admin API's ``sys_invocation_status.partition_key`` shows it); None when
        it has no leader now or nobody answers."""
        partitions, _ = read_partitions([n.address for n in self.nodes if n.answers()])
        held = [p for p in partitions or [] if p.holds(partition_key)]
        return held[0].leader if held else None
