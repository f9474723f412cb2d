"""The lab's state file, ``<home>/stack.json``, read and written in one place: what the running
``./lab up`` of a working folder started, where each part listens and under which PID.

``up`` writes it once every part is up, again whenever it starts a part anew (the service after
a crash, a cluster node on ``./lab node start``), and deletes it when it stops. An ``up`` that
is killed leaves it behind, so a reader checks the PIDs it names before it believes them
(``dbpatterns.stack.lab.parts_alive``). The file is what ``./lab status --json`` prints, with
each part's live checks added (``LabStatus``), and users' scripts read it: its keys and their
order do not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dbpatterns.stack.cluster import ClusterStatus

STATE_FILE_NAME = "stack.json"


class Part(BaseModel):
    """One process of the lab, as the state file records it."""

    model_config = ConfigDict(frozen=True)

    address: str  # where it listens: host:port, or its URL
    pid: int | None = None  # None: not started
    server: str | None = None  # the service's only: the ASGI server it runs under

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"address": self.address, "pid": self.pid}
        if self.server is not None:
            found["server"] = self.server
        return found


class LabState(BaseModel):
    """The whole state file: the lab's URLs and its parts by name (``postgres``,
    ``restate-server`` or ``restate-n1``... for a cluster's nodes, ``service``)."""

    model_config = ConfigDict(frozen=True)

    home: Path
    database_url: str
    ingress_url: str
    admin_url: str
    service_url: str
    parts: dict[str, Part]
    #: A cluster's (``./lab up --nodes 3``): how many nodes, and the base of their ports; both
    #: None for a single restate-server.
    restate_nodes: int | None = None
    restate_cluster_port_base: int | None = None

    def pids(self) -> dict[str, int]:
        """The PIDs the file names, by part (a part not started has none); they may be stale."""
        return {name: part.pid for name, part in self.parts.items() if part.pid}

    def as_dict(self) -> dict[str, Any]:
        """The file's JSON object, keys in the order they have always been written in."""
        found: dict[str, Any] = {
            "home": str(self.home),
            "database_url": self.database_url,
            "ingress_url": self.ingress_url,
            "admin_url": self.admin_url,
            "service_url": self.service_url,
            "parts": {name: part.as_dict() for name, part in self.parts.items()},
        }
        if self.restate_nodes is not None:
            found["restate_nodes"] = self.restate_nodes
            found["restate_cluster_port_base"] = self.restate_cluster_port_base
        return found

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=2))


def load(home: Path) -> LabState | None:
    """The state the ``up`` of working folder ``home`` wrote; None if there is no state file (no
    ``up`` ran, or it stopped), or it cannot be read as one."""
    try:
        return LabState.model_validate_json((home / STATE_FILE_NAME).read_text())
    except (OSError, ValueError, ValidationError):
        return None


@dataclass(frozen=True)
class PartStatus:
    """A part of the state, checked now: does its process run, does it answer its check?"""

    part: Part
    running: bool
    healthy: bool


@dataclass(frozen=True)
class LabStatus:
    """What ``./lab status`` tells: the lab's state (its file, or what an ``up`` would start),
    each part checked now, and for a cluster each node's status and the partitions' leaders."""

    state: LabState
    parts: dict[str, PartStatus]
    cluster: ClusterStatus | None

    @property
    def up(self) -> bool:
        """Our ``up`` runs every part (state file, live PIDs) and each answers its check."""
        return all(p.healthy and p.running for p in self.parts.values())

    def as_dict(self) -> dict[str, Any]:
        """As ``./lab status --json`` prints it: the state file's keys, each part with
        ``running`` and ``healthy`` added, ``cluster`` for a cluster, then ``up``."""
        found = self.state.as_dict()
        found["parts"] = {
            name: status.part.as_dict() | {"running": status.running, "healthy": status.healthy}
            for name, status in self.parts.items()
        }
        if self.cluster is not None:
            found["cluster"] = self.cluster.as_dict()
        found["up"] = self.up
        return found
