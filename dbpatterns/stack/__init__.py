"""The embedded local stack: a real PostgreSQL, a real restate-server and the service, as processes.

One implementation of "start Postgres / restate-server / the service" serves ``./lab up``,
the test fixtures and the chaos harness. Each part is a child process whose real PID we own (no
wrapper scripts in between), so it can be stopped, killed or paused as a whole:

* ``PostgresServer`` initialises (first run) or reuses a data directory, starts ``postgres`` on
  the configured host and port with ``db/postgresql.conf`` included, and creates the database.
  As root it runs the server as the ``postgres`` OS user, because ``initdb`` refuses root.
* ``RestateServer`` runs the ``restate-server`` binary from the npm package with the lab's own
  timeouts (``RestateTuning``), its data under the working folder.
* ``RestateCluster`` runs several of them as one Restate cluster instead (``./lab up --nodes 3``):
  replicated metadata and log, any one node may fail, each node's ingress takes calls.
* ``ServiceProcess`` runs the service under granian (or hypercorn), one process, HTTP/2 cleartext.

Every failure a user can act on (a missing binary, a busy port, a part that does not come up)
is a ``LabError`` carrying what went wrong and what to do.

One module per part: ``processes`` (child processes and the checks around them, on ``procfs``,
the one reader of ``/proc``), ``postgres``, ``restate``, the cluster (``cluster_nodes``: each
node; ``partitions``: who leads; ``cluster``: the nodes together), ``service``, ``lab`` (the parts
together, as ``Stack``), ``state`` (the state file a running ``up`` writes, ``LabState``) and
``supervise`` (``./lab up``'s watch over a running ``Stack``). This package re-exports what the
rest of the lab uses.
"""

from __future__ import annotations

from dbpatterns.stack.cluster import (
    ClusterStatus,
    NodeEvent,
    RestateCluster,
)
from dbpatterns.stack.cluster_nodes import ClusterNode, free_port_base
from dbpatterns.stack.lab import (
    Stack,
    lab_running,
    parts_alive,
    probe,
    request_node_start,
    running_stack,
    shaped_like_running_lab,
    take_node_start_requests,
)
from dbpatterns.stack.partitions import Partition
from dbpatterns.stack.postgres import (
    PG_CONF,
    PG_INCLUDE_NAME,
    PostgresServer,
    find_pg_bin_dir,
)
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    RunAs,
    free_port,
    http_ok,
    pid_alive,
    pid_stopped,
    port_is_free,
    require_free_ports,
    spawn,
    tail,
    wait_until,
)
from dbpatterns.stack.restate import (
    RestateServer,
    find_restate_binary,
    register_deployment,
)
from dbpatterns.stack.service import (
    ServiceProcess,
    settings_env,
)
from dbpatterns.stack.state import (
    STATE_FILE_NAME,
    LabState,
    LabStatus,
    Part,
    PartStatus,
)
from dbpatterns.stack.supervise import supervise

__all__ = [
    "PG_CONF",
    "PG_INCLUDE_NAME",
    "STATE_FILE_NAME",
    "ChildProcess",
    "ClusterNode",
    "ClusterStatus",
    "LabError",
    "LabState",
    "LabStatus",
    "NodeEvent",
    "Part",
    "PartStatus",
    "Partition",
    "PostgresServer",
    "RestateCluster",
    "RestateServer",
    "RunAs",
    "ServiceProcess",
    "Stack",
    "find_pg_bin_dir",
    "find_restate_binary",
    "free_port",
    "free_port_base",
    "http_ok",
    "lab_running",
    "parts_alive",
    "pid_alive",
    "pid_stopped",
    "port_is_free",
    "probe",
    "register_deployment",
    "request_node_start",
    "require_free_ports",
    "running_stack",
    "settings_env",
    "shaped_like_running_lab",
    "spawn",
    "supervise",
    "tail",
    "take_node_start_requests",
    "wait_until",
]
