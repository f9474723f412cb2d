"""The lab as a whole: Postgres, restate-server (one, or a cluster of ``restate_nodes``) and the
service of one working folder, started in order and stopped newest first, with a state file that
``./lab status`` reads (``dbpatterns.stack.state``). ``./lab up`` watches it running with
``dbpatterns.stack.supervise``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dbpatterns.config import Settings
from dbpatterns.service import migrate
from dbpatterns.stack.cluster import ClusterStatus, RestateCluster
from dbpatterns.stack.postgres import (
    PostgresServer,
    pg_up,
)
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    http_ok,
    pid_alive,
    require_free_ports,
)
from dbpatterns.stack.restate import (
    RestateServer,
    find_restate_binary,
    register_deployment,
)
from dbpatterns.stack.service import (
    ServiceProcess,
)
from dbpatterns.stack.state import (
    STATE_FILE_NAME,
    LabState,
    LabStatus,
    Part,
    PartStatus,
    load,
)

#: Requests to a running ``up`` (``./lab node start nN``): one empty file per request.
CONTROL_DIR_NAME = "control"


@dataclass
class Stack:
    """Postgres, restate-server and the service of one working folder (``settings.home``)."""

    settings: Settings
    postgres: PostgresServer = field(init=False)
    restate: RestateServer | RestateCluster = field(init=False)
    service: ServiceProcess = field(init=False)
    created_database: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        home = self.settings.home
        self.postgres = PostgresServer(self.settings, home / "postgres")
        self.restate = (
            RestateCluster(self.settings)
            if self.settings.restate_nodes > 1
            else RestateServer(self.settings, home / "restate")
        )
        self.service = ServiceProcess(self.settings, home / "logs" / "service.log")

    @property
    def state_file(self) -> Path:
        return self.settings.home / STATE_FILE_NAME

    @property
    def cluster(self) -> RestateCluster | None:
        """The Restate cluster, when the lab runs one instead of a single restate-server."""
        return self.restate if isinstance(self.restate, RestateCluster) else None

    def ports(self) -> dict[str, tuple[str, int]]:
        s = self.settings
        restate = (
            self.cluster.ports()
            if self.cluster
            else {
                "restate ingress": (s.bind_host, s.ingress_port),
                "restate admin": (s.bind_host, s.admin_port),
                "restate node": (s.bind_host, s.restate_node_port),
            }
        )
        return {
            "postgres": (s.bind_host, self.postgres.port),
            **restate,
            "service": (s.bind_host, s.service_port),
        }

    def preflight(self) -> None:
        """Everything that can be checked before a process starts: binaries, ports."""
        _ = self.postgres.bin_dir
        find_restate_binary("restate-server", "restate-server", self.settings.restate_bin)
        if self.cluster:
            find_restate_binary("restatectl", "restatectl")
        alive = parts_alive(self.settings.home)
        if alive:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in alive.items())
            raise LabError(
                f"the lab in {self.settings.home} is already up: {listed}",
                "use it (`./lab status`), or stop it with Ctrl-C in its terminal; if no "
                "`./lab up` runs in any terminal, stop what is left with "
                f"`kill {' '.join(str(pid) for pid in alive.values())}`",
            )
        require_free_ports(self.ports())

    def start(self, say: Callable[[str], None] = lambda _: None) -> None:
        self.preflight()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        try:
            say(
                "postgres: "
                + (
                    "initialising a new data directory"
                    if not self.postgres.initialized
                    else f"reusing {self.postgres.data_dir}"
                )
            )
            self.created_database = self.postgres.init()
            self.postgres.start()
            say("postgres: migrating (alembic upgrade head) and seeding")
            migrate.migrate(self.settings.libpq_url)
            say(
                f"restate: starting a cluster of {len(self.cluster.nodes)} nodes "
                "(ready once every partition has a leader, about 10 s)"
                if self.cluster
                else "restate-server: starting"
            )
            self.restate.start()
            say("service: starting")
            self.service.start()
            register_deployment(self.settings.admin_url, self.settings.service_url)
            say("service: registered with restate-server")
            self.write_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every part, newest first; data stays in place."""
        self.service.stop()
        self.restate.stop()
        self.postgres.stop()
        self.state_file.unlink(missing_ok=True)

    def children(self) -> list[ChildProcess]:
        restate = (
            self.restate.processes()
            if isinstance(self.restate, RestateCluster)
            else [self.restate.process]
        )
        parts = (self.postgres.process, *restate, self.service.process)
        return [p for p in parts if p is not None]

    def describe(self) -> LabState:
        s = self.settings
        pids = {c.name: c.pid for c in self.children()}
        restate = (
            {
                f"restate-{node.name}": Part(
                    address=node.address.admin_url, pid=pids.get(f"restate-{node.name}")
                )
                for node in self.cluster.nodes
            }
            if self.cluster
            else {"restate-server": Part(address=s.admin_url, pid=pids.get("restate-server"))}
        )
        return LabState(
            home=s.home,
            database_url=s.libpq_url,
            ingress_url=s.ingress_url,
            admin_url=s.admin_url,
            service_url=s.service_url,
            parts={
                "postgres": Part(
                    address=f"{s.bind_host}:{self.postgres.port}", pid=pids.get("postgres")
                ),
                **restate,
                "service": Part(
                    address=s.service_url, pid=pids.get("service"), server=s.service_server
                ),
            },
            restate_nodes=s.restate_nodes if self.cluster else None,
            restate_cluster_port_base=s.restate_cluster_port_base if self.cluster else None,
        )

    def write_state(self) -> None:
        self.describe().write(self.state_file)


def lab_running(home: Path) -> bool:
    """Does an `up` of this working folder still run any of its parts?"""
    return bool(parts_alive(home))


def parts_alive(home: Path) -> dict[str, int]:
    """The parts an `up` of this working folder started that still run: {name: pid}."""
    state = load(home)
    if state is None:
        return {}
    return {name: pid for name, pid in state.pids().items() if pid_alive(pid)}


def request_node_start(home: Path, name: str) -> None:
    """Ask the ``up`` of this working folder to start cluster node ``name`` again (only that
    process can: the nodes are its children, and die with it)."""
    control = home / CONTROL_DIR_NAME
    control.mkdir(parents=True, exist_ok=True)
    (control / f"start-{name}").touch()


def take_node_start_requests(home: Path) -> list[str]:
    """The nodes asked to start since the last look (each request is taken once)."""
    names = []
    for request in sorted((home / CONTROL_DIR_NAME).glob("start-*")):
        request.unlink(missing_ok=True)
        names.append(request.name.removeprefix("start-"))
    return names


def shaped_like_running_lab(settings: Settings, explicit: bool) -> Settings:
    """The settings, with the number of Restate nodes and their ports of the lab that runs in
    this working folder (its state file), so that ``bench``, ``janitor`` and ``restate`` find
    a cluster that ``up --nodes 3`` started; ``explicit``: the environment set
    ``DBPATTERNS_RESTATE_NODES``, which wins."""
    state = load(settings.home)
    if explicit or state is None or state.restate_nodes is None:
        return settings
    return with_cluster_of(settings, state)


def with_cluster_of(settings: Settings, state: LabState) -> Settings:
    """The settings with the cluster a state file describes: its nodes and their ports."""
    return settings.model_copy(
        update={
            "restate_nodes": state.restate_nodes,
            "restate_cluster_port_base": state.restate_cluster_port_base,
        }
    )


def probe(settings: Settings) -> LabStatus:
    """Is each part up? From the state file of a running ``up`` plus live checks; for a cluster,
    each node's status and which node leads which partition (``LabStatus.cluster``)."""
    state = load(settings.home) or Stack(settings).describe()
    checks: dict[str, Callable[[], bool]] = {
        "postgres": lambda: pg_up(settings.libpq_url),
        "restate-server": lambda: http_ok(f"{settings.admin_url}/health"),
        "service": lambda: http_ok(f"{settings.service_url}/health"),
    }
    known: dict[str, bool] = {}
    cluster = None
    if state.restate_nodes is not None:
        cluster = cluster_status(settings, state)
        known = {f"restate-{node.name}": node.healthy for node in cluster.nodes}
    parts = {
        name: PartStatus(
            part,
            running=bool(part.pid and pid_alive(part.pid)),
            healthy=known[name] if name in known else checks[name](),
        )
        for name, part in state.parts.items()
    }
    return LabStatus(state, parts, cluster)


def cluster_status(settings: Settings, state: LabState) -> ClusterStatus:
    """The status of the cluster a state file describes, whatever this process's settings say
    about the number of nodes and their ports."""
    cluster = RestateCluster(with_cluster_of(settings, state))
    parts = state.parts
    return cluster.status({n.name: parts[f"restate-{n.name}"].pid for n in cluster.nodes})


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
