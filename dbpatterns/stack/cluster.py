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
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from dbpatterns.config import RestatePorts, Settings
from dbpatterns.service import identity
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    pid_alive,
    pid_stopped,
    port_is_free,
    spawn,
    tail,
    wait_until,
)
from dbpatterns.stack.restate import (
    answers_health_checks,
    find_restate_binary,
    server_env,
    tuning_toml,
)

CLUSTER_NAME = "lab"
#: Copies of each log record and of each partition's processor: one node may fail.
REPLICATION = 2
#: Restate's default is 24; 6 give each node about two to lead and keep ``status`` readable.
PARTITIONS = 6
ROLES = ("admin", "worker", "log-server", "metadata-server", "http-ingress")

NodeAction = Literal["kill", "pause", "resume", "restart"]


@dataclass(frozen=True)
class NodeAddress:
    """Where one node listens. ``index`` (1-based) is also its forced node id: n2 is N2."""

    index: int
    host: str
    ports: RestatePorts

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def node_url(self) -> str:
        """Node-to-node traffic, the metadata store and restatectl."""
        return f"http://{self.host}:{self.ports.node}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.ports.admin}"

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.ports.ingress}"


def node_addresses(settings: Settings) -> list[NodeAddress]:
    """Every node of the cluster the settings describe, n1 first."""
    return [
        NodeAddress(i, settings.bind_host, settings.restate_ports(i))
        for i in range(1, settings.restate_nodes + 1)
    ]


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


class ClusterNode:
    """One restate-server of the cluster: a config file, data dir and log of its own."""

    def __init__(
        self,
        settings: Settings,
        address: NodeAddress,
        peers: Sequence[NodeAddress],
        advertised: Mapping[str, str] | None = None,
    ) -> None:
        """``advertised``: node name -> the URL its peers dial, where that is not the node's
        own port (the chaos harness routes node-to-node traffic through its network)."""
        self.address = address
        self.peers = list(peers)  # every node, itself included: the metadata store's members
        self.advertised = {p.name: p.node_url for p in self.peers} | dict(advertised or {})
        self.root = settings.home / "cluster" / address.name
        self.config_path = self.root / "restate.toml"
        self.log_path = settings.home / "logs" / f"restate-{address.name}.log"
        self.process: ChildProcess | None = None

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.alive() else None

    @property
    def role(self) -> str:
        return "provisions the cluster" if self.address.index == 1 else "joins n1's cluster"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def answers(self) -> bool:
        """Do its admin API and ingress answer their health checks?"""
        return answers_health_checks(self.address.admin_url, self.address.ingress_url)

    def config_toml(self, identity_key_file: Path | None) -> str:
        """Its config: the cluster's keys (each checked against ``restate-server
        --dump-config``, which ignores an unknown key silently), then the lab's tuning."""
        a = self.address
        cluster = [
            "# Written by dbpatterns on every start; edit dbpatterns/stack/cluster.py instead.",
            f'cluster-name = "{CLUSTER_NAME}"',
            f'node-name = "{a.name}"',
            f"force-node-id = {a.index}",
            f"auto-provision = {'true' if a.index == 1 else 'false'}",
            f"roles = {json.dumps(list(ROLES))}",
            f"default-replication = {REPLICATION}",
            f"default-num-partitions = {PARTITIONS}",
            f'base-dir = "{self.root / "data"}"',
            f'bind-address = "{a.host}:{a.ports.node}"',
            f'advertised-address = "{self.advertised[a.name]}/"',
            "disable-telemetry = true",
            "log-disable-ansi-codes = true",
            "",
            "[metadata-client]",
            f"addresses = {json.dumps([f'{self.advertised[p.name]}/' for p in self.peers])}",
            "",
            "[bifrost]",
            'default-provider = "replicated"',
        ]
        listeners = [
            "[ingress]",
            f'bind-address = "{a.host}:{a.ports.ingress}"',
            "",
            "[admin]",
            f'bind-address = "{a.host}:{a.ports.admin}"',
        ]
        return "\n".join([*cluster, "", tuning_toml(identity_key_file), *listeners, ""])

    def spawn(
        self, binary: Path, identity_key_file: Path | None, env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        """Write the config and start the process (not waiting for it); ``env``: ``RESTATE_*``
        overrides of the config. The data dir stays across starts, so a node started again
        rejoins with what it had."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_toml(identity_key_file))
        self.process = spawn(
            f"restate-{self.name}",
            [str(binary), "--config-file", str(self.config_path)],
            self.log_path,
            env=server_env(env),
            cwd=self.root,
        )
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=20)


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


def free_port_base(settings: Settings, tries: int = 20) -> int:
    """A ``restate_cluster_port_base`` under which every node's ports are free now, for a
    cluster of its own next to others (the tests, the chaos harness). The lab's default ports
    are 21xxx-23xxx, and Linux hands out ephemeral ports (``free_port()``, outgoing
    connections) from 32768 up: the base is drawn in between."""
    top = 32768 - 1000 * settings.restate_nodes - 200
    for base in random.sample(range(24000, top, 100), tries):
        candidate = settings.model_copy(update={"restate_cluster_port_base": base})
        ports = [p for a in node_addresses(candidate) for p in a.ports]
        if all(port_is_free(settings.bind_host, p) for p in ports):
            return base
    raise LabError("no free range of ports for a Restate cluster", "stop what holds them")


def metadata_members(node: NodeAddress) -> set[str] | None:
    """The nodes in the replicated metadata store, as ``node``'s admin API tells (its
    ``/cluster-health``, deprecated in 1.7 but answered); None if it does not answer."""
    try:
        response = httpx.get(f"{node.admin_url}/cluster-health", timeout=2.0)
        response.raise_for_status()
        ids = response.json()["metadata_cluster_health"]["members"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return {f"n{i}" for i in ids}  # node id i is node n<i> (force-node-id)


@dataclass(frozen=True)
class Partition:
    """One partition: the range of partition keys it holds, and the node leading it."""

    id: int
    start_key: int
    end_key: int  # inclusive
    leader: str | None  # None: no leader now

    def holds(self, partition_key: int) -> bool:
        return self.start_key <= partition_key <= self.end_key


PARTITIONS_QUERY = (
    "SELECT p.partition_id, p.start_key, p.end_key, n.name AS leader FROM partitions p"
    " LEFT JOIN nodes n ON p.leader_plain_node_id = n.plain_node_id ORDER BY p.partition_id"
)


def read_partitions(
    answering: Sequence[NodeAddress], timeout: float = 10.0
) -> tuple[list[Partition] | None, str]:
    """The partition table (the cluster controller's view: a node killed a moment ago leads
    until its partitions fail over), as restatectl reads it through the answering nodes only,
    so a paused node cannot stall the question; and where it came from, or why it is unknown.
    (``restatectl -S`` would name one node, but its ``sql`` ignores it in 1.7.12 and asks
    localhost:5122.)"""
    if not answering:
        return None, "unknown: no node answers"
    try:
        ctl = find_restate_binary("restatectl", "restatectl")
    except LabError as exc:
        return None, f"unknown: {exc.problem}"
    addresses = ",".join(node.node_url for node in answering)
    argv = [str(ctl), "sql", "--address", addresses, "--jsonl", PARTITIONS_QUERY]
    argv += ["--connect-timeout", "1000", "--request-timeout", "5000"]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=server_env({"NO_COLOR": "1"})
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"unknown: restatectl failed ({exc})"
    if out.returncode != 0:
        return None, f"unknown: restatectl failed ({' '.join(out.stderr.split())[:300]})"
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    partitions = [
        Partition(int(r["partition_id"]), int(r["start_key"]), int(r["end_key"]), r.get("leader"))
        for r in rows
    ]
    return partitions, f"restatectl, partitions table, asked through {answering[0].name}"
