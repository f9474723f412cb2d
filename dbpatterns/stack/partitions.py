"""Who leads which partition of a Restate cluster, and who is a member of its metadata store:
what ``restatectl`` (pinned in package.json) reads from the cluster's partition table, and what a
node's admin API tells. restate-server 1.7.12's admin API, its SQL (``sys_*`` tables) and the
``restate`` CLI do not say who leads. restatectl is asked through the nodes that answer only, so
a paused node cannot stall the question; what nobody can tell is None, with the reason.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from dbpatterns.stack.cluster_nodes import NodeAddress
from dbpatterns.stack.processes import LabError
from dbpatterns.stack.restate import find_restate_binary, server_env


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
