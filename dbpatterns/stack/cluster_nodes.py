"""The nodes of a Restate cluster on one machine (``dbpatterns.stack.cluster``): where each
listens (``NodeAddress``: n<i>'s ports from ``Settings.restate_ports``), the config it runs with
(every role, the cluster's name, replication and partitions), and its process (``ClusterNode``).
A node's base dir stays across starts, so a node started again rejoins as itself (its node id is
forced: n<i> is N<i>).
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbpatterns.config import RestatePorts, Settings
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    port_is_free,
    spawn,
)
from dbpatterns.stack.restate import answers_health_checks, server_env, tuning_toml

CLUSTER_NAME = "lab"
#: Copies of each log record and of each partition's processor: one node may fail.
REPLICATION = 2
#: Restate's default is 24; 6 give each node about two to lead and keep ``status`` readable.
PARTITIONS = 6
ROLES = ("admin", "worker", "log-server", "metadata-server", "http-ingress")


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
            "# Written by dbpatterns on every start; edit dbpatterns/stack/cluster_nodes.py"
            " instead.",
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
