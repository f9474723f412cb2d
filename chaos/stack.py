"""The chaos harness's own stack: every part a process this harness started, and the faults on
them composed in.

Everything runs as processes this harness started (``dbpatterns.stack``'s classes), on free
ports, in a temporary folder:

* PostgreSQL, migrated; restate-server with short timeouts (``CHAOS_RESTATE_ENV``), so a hung
  attempt is given up in seconds, not minutes;
* two service processes ("slots"), each one process (``dbpatterns.service.serve``) on its own port,
  both reading the same failpoint control file;
* a ``SwitchableProxy`` in front of them, registered as the deployment URI. One slot is active
  (the proxy's target); the other is a warm standby.

The parts a cell works with: ``services`` (the pair, its watcher and its zombies:
``chaos.service_pair``), ``injector`` (the faults on the other parts: ``chaos.faults``), both
counting into ``faults``, and ``failpoints`` (the control file: ``chaos.failpoint_control``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from chaos.failpoint_control import FailpointControl
from chaos.faults import FaultCounts, FaultInjector, as_cluster
from chaos.network import SERVICE, LoopbackNetwork
from chaos.service_pair import ServicePair, ServiceSlot
from chaos.spawner import Spawner
from dbpatterns.config import Settings
from dbpatterns.service import failpoints, migrate
from dbpatterns.stack import (
    LabError,
    PostgresServer,
    RestateCluster,
    RestateServer,
    ServiceProcess,
    free_port,
    free_port_base,
    register_deployment,
)
from dbpatterns.stack.client import Admin
from dbpatterns.stack.cluster_nodes import node_addresses
from dbpatterns.testing.proxy import SwitchableProxy

#: restate-server settings of the harness (environment overrides win over the lab's TOML).
#: Restate gives up on a silent attempt after inactivity + abort + a fixed 5 s drain.
CHAOS_RESTATE_ENV = {
    "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "2s",
    "RESTATE_WORKER__INVOKER__ABORT_TIMEOUT": "1s",
    "RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL": "100ms",
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "1s",
}

#: The cluster's: an attempt of a node-fault cell is held (``sleep``) before its commit for
#: longer than the 2 s above, while the harness finds and fails the leader of its partition; it
#: must stay in flight until then, not be given up by the invoker first.
CHAOS_CLUSTER_RESTATE_ENV = CHAOS_RESTATE_ENV | {
    "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "10s",
}

#: ``idempotency.update``'s token TTL in the quick profile, which is also its calls' deadline:
#: long enough for every cell's call to commit within it (a zombie cell's retry comes about 8 s
#: after the pause, when Restate gives up on the paused attempt). The cells that wait out a
#: TTL use ``shapesBrief``, whose tokens live seconds (``dbpatterns.examples.shapes``).
CHAOS_TOKEN_TTL = timedelta(seconds=60)
#: The TTL of a stack whose processes are paused at random (soak): far longer than a zombie
#: lives there (``auto_resume_after`` plus its linger).
SOAK_TOKEN_TTL = timedelta(minutes=10)
#: The service's setting that turns ``dbpatterns.service.sqltrace`` on.
SQL_TRACE_ENV = "DBPATTERNS_SQL_TRACE_FILE"
#: A paused zombie's open transaction is ended by Postgres after this long.
CHAOS_IDLE_IN_TRANSACTION_MS = 3000


@dataclass
class ChaosStack:
    """Postgres + restate-server + the service pair, and the faults on them."""

    home: Path
    token_ttl: timedelta = CHAOS_TOKEN_TTL
    #: restate-server nodes: 1, or a cluster (``RestateCluster``) of this many.
    nodes: int = 1
    settings: Settings = field(init=False)
    postgres: PostgresServer = field(init=False)
    restate: RestateServer | RestateCluster = field(init=False)
    #: A cluster's: node-to-node and node-to-service traffic crosses it (partitions).
    network: LoopbackNetwork | None = field(default=None, init=False)
    services: ServicePair = field(init=False)
    failpoints: FailpointControl = field(init=False)
    faults: FaultCounts = field(default_factory=FaultCounts, init=False)
    injector: FaultInjector = field(init=False)
    _spawner: Spawner = field(default_factory=Spawner, init=False)
    _admin: Admin | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        home = self.home
        self.settings = Settings(
            home=home,
            database_url=Settings().database_url_at("127.0.0.1", free_port()),
            ingress_port=free_port(),
            admin_port=free_port(),
            restate_node_port=free_port(),
            service_port=free_port(),  # the proxy's: what Restate knows as the service
            idempotency_token_ttl=self.token_ttl,
            idle_in_transaction_timeout_ms=CHAOS_IDLE_IN_TRANSACTION_MS,
            pool_size=10,
            restate_nodes=self.nodes,
        )
        self.postgres = PostgresServer(self.settings, home / "postgres")
        if self.nodes > 1:
            base = free_port_base(self.settings)
            self.settings = self.settings.model_copy(update={"restate_cluster_port_base": base})
            addresses = node_addresses(self.settings)
            self.network = LoopbackNetwork(
                self.settings.bind_host,
                {a.name: a.ports.node for a in addresses} | {SERVICE: self.settings.service_port},
                self._node_pids,
            )
            self.restate = RestateCluster(
                self.settings,
                env=CHAOS_CLUSTER_RESTATE_ENV,
                advertised={a.name: self.network.address(a.name) for a in addresses},
            )
        else:
            self.restate = RestateServer(self.settings, home / "restate")
        self.failpoints = FailpointControl(home / "failpoints.conf")
        env = {
            failpoints.ENV_FILE: str(self.failpoints.path),
            SQL_TRACE_ENV: str(self.sql_trace_path),
        }
        slots = []
        for name in ("service-1", "service-2"):
            port = free_port()
            slot_settings = self.settings.model_copy(update={"service_port": port})
            service = ServiceProcess(slot_settings, home / "logs" / f"{name}.log", extra_env=env)
            slots.append(ServiceSlot(name, port, service))
        proxy = SwitchableProxy(self.settings.bind_host, self.settings.service_port, 0)
        self.services = ServicePair(slots, proxy, self.faults, self._spawner, self.database_url)
        self.injector = FaultInjector(
            self.faults,
            self.postgres,
            self.restate,
            self.network,
            self._spawner,
            database_url=self.database_url,
            admin=lambda: self.admin,
            start_restate=self.start_restate,
        )

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    def create(cls, token_ttl: timedelta = CHAOS_TOKEN_TTL, nodes: int = 1) -> ChaosStack:
        """A stack in a fresh temporary folder the ``postgres`` OS user can reach."""
        home = Path(tempfile.mkdtemp(prefix="dbpatterns-chaos-"))
        home.chmod(0o755)
        return cls(home, token_ttl, nodes)

    def start(self) -> None:
        try:
            self._spawner.run(self.postgres.start)
            migrate.migrate(self.settings.libpq_url)
            if self.network is not None:
                self.network.start()
            self.start_restate()
            self.services.start()
            # In a cluster the nodes reach the proxy through the network, so a partition cuts
            # a node off from the service too.
            proxy = self.services.proxy
            service = proxy.url if self.network is None else self.network.address(SERVICE)
            register_deployment(self.settings.admin_url, service)
            self.services.watch()
        except BaseException:
            self.stop()
            raise

    def stop(self, remove: bool = True) -> None:
        self.services.stop()
        if self.network is not None:
            self.network.close()
        if self._admin is not None:
            self._admin.close()
        with contextlib.suppress(Exception):
            self.restate.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        self._spawner.shutdown()
        if remove:
            shutil.rmtree(self.home, ignore_errors=True)

    def start_restate(self) -> None:
        restate = self.restate
        if isinstance(restate, RestateCluster):
            self._spawner.run(restate.start)
            # Ready is not yet settled: leaders still move for a while after the first start,
            # and each move restarts the attempts in flight (a node-fault cell then finds its
            # calls answered before its fault).
            if not restate.settled():
                raise LabError("the Restate cluster did not settle after it started", "")
        else:
            self._spawner.run(lambda: restate.start(env=CHAOS_RESTATE_ENV))
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    @property
    def admin(self) -> Admin:
        if self._admin is None:
            self._admin = Admin(self.settings.admin_url, timeout=10)
        return self._admin

    @property
    def sql_trace_path(self) -> Path:
        """Where both service processes trace each attempt's SQL
        (``dbpatterns.service.sqltrace``)."""
        return self.home / "sqltrace.jsonl"

    @property
    def database_url(self) -> str:
        return self.settings.libpq_url

    @property
    def ingress_url(self) -> str:
        return self.settings.ingress_url

    @property
    def ingress_urls(self) -> list[str]:
        """Every ingress: one, or every node's of a cluster."""
        if isinstance(self.restate, RestateCluster):
            return [node.address.ingress_url for node in self.restate.nodes]
        return [self.ingress_url]

    @property
    def cluster(self) -> RestateCluster:
        return as_cluster(self.restate)

    def _node_pids(self) -> dict[str, int]:
        """Node name -> pid of the nodes running now: the network tells partners apart so."""
        if not isinstance(self.restate, RestateCluster):
            return {}
        return {n.name: pid for n in self.restate.nodes if (pid := n.pid) is not None}
