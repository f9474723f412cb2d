"""The chaos harness's own stack, and the faults it injects into it.

Everything runs as processes this harness started (``dbpatterns.stack``'s classes), on free
ports, in a temporary folder:

* PostgreSQL, migrated; restate-server with short timeouts (``CHAOS_RESTATE_ENV``), so a hung
  attempt is given up in seconds, not minutes;
* two service processes ("slots"), each one process (``dbpatterns.service.serve``) on its own port,
  both reading the same failpoint control file;
* a ``SwitchableProxy`` in front of them, registered as the deployment URI. One slot is active
  (the proxy's target); the other is a warm standby.

A watcher thread keeps the service available, as an orchestrator would: when the active process
dies (a failpoint's ``kill``), the proxy switches to the standby and the dead one is restarted
in the background; when it stops (a failpoint's ``pause``), the proxy switches and cuts Restate
off from the paused process (see ``chaos.proxy``), which then lives on as a zombie until the
harness resumes it (``resume_zombie``).

Faults on the other parts: ``kill_restate`` / ``restart_restate`` (SIGKILL, then start on the
same data), ``restart_postgres`` (immediate shutdown, then start: crash recovery), and
``terminate_service_connections`` (``pg_terminate_backend`` on the service's sessions).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

import dbpatterns.patterns  # noqa: F401  (declares every failpoint: fills the catalogue)
from chaos.network import SERVICE, LoopbackNetwork
from chaos.proxy import SwitchableProxy
from dbpatterns.config import Settings
from dbpatterns.exactly_once.calls import INVOCATION_ID
from dbpatterns.service import failpoints, migrate
from dbpatterns.service.db import APPLICATION_NAME
from dbpatterns.stack import (
    LabError,
    PostgresServer,
    RestateCluster,
    RestateServer,
    ServiceProcess,
    free_port,
    free_port_base,
    procfs,
    register_deployment,
    wait_until,
)
from dbpatterns.stack.client import Admin
from dbpatterns.stack.cluster import node_addresses

log = logging.getLogger("chaos")

T = TypeVar("T")

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


BUSY_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = %s AND state IS DISTINCT FROM 'idle'"
)
SESSIONS_WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
)


# --- failpoints ----------------------------------------------------------------------------------


class FailpointControl:
    """The control file every service process of the harness reads (``DBPATTERNS_FAILPOINTS_FILE``).

    Writes take the same lock the services take when they consume a count, so the harness and a
    firing failpoint never overwrite each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._serial = 0
        path.write_text("")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield f

    def set(self, actions: dict[str, str]) -> None:
        """Replace every setting with ``actions`` ({failpoint: action}); validated first."""
        parsed = {name: failpoints.Action.parse(action) for name, action in actions.items()}
        unknown = sorted(set(parsed) - set(failpoints.CATALOGUE))
        if unknown:
            raise LabError(
                f"unknown failpoint(s): {', '.join(unknown)}",
                "the pattern code declares its failpoints; see chaos/README.md for the list",
            )
        self._serial += 1
        text = f"# chaos setting {self._serial}\n" + failpoints.format_spec(parsed)
        with self._locked() as f:
            f.seek(0)
            f.truncate()
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        self.set({})

    def current(self) -> dict[str, failpoints.Action]:
        with self._locked() as f:
            return failpoints.parse_spec(f.read())

    def remaining(self, name: str) -> int | None:
        """How many more times a counted action fires (0 once spent); None if not counted."""
        action = self.current().get(name)
        if action is None or action.verb == "off":
            return 0
        return action.count


# --- the service processes -----------------------------------------------------------------------


@dataclass(eq=False)
class ServiceSlot:
    """One service process of the pair, on its own port."""

    name: str
    port: int
    service: ServiceProcess
    state: str = "stopped"  # starting | ready | zombie | dead | stopped
    pid: int | None = None

    def describe(self) -> str:
        return f"{self.name} (port {self.port}, pid {self.pid}, {self.state})"


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


@dataclass
class Zombie:
    """A paused service process that Restate has been cut off from."""

    slot: ServiceSlot
    pid: int | None
    paused_at: float
    connections_cut: int
    restate_side_reset: bool  # False: Restate's side is silent until ``reset_restate_side``
    resumed_at: float | None = None  # wall clock (``time.time()``), as the SQL trace has it


@dataclass
class ChaosStack:
    """Postgres + restate-server + proxy + two service processes, and the faults on them."""

    home: Path
    token_ttl: timedelta = CHAOS_TOKEN_TTL
    #: restate-server nodes: 1, or a cluster (``RestateCluster``) of this many.
    nodes: int = 1
    settings: Settings = field(init=False)
    postgres: PostgresServer = field(init=False)
    restate: RestateServer | RestateCluster = field(init=False)
    proxy: SwitchableProxy = field(init=False)
    #: A cluster's: node-to-node and node-to-service traffic crosses it (partitions).
    network: LoopbackNetwork | None = field(default=None, init=False)
    slots: list[ServiceSlot] = field(init=False)
    failpoints: FailpointControl = field(init=False)
    faults: FaultCounts = field(default_factory=FaultCounts, init=False)
    zombies: list[Zombie] = field(default_factory=list, init=False)  # paused now
    resumed: list[Zombie] = field(default_factory=list, init=False)  # every zombie resumed so far
    active: ServiceSlot = field(init=False)
    auto_resume_after: float | None = field(default=None, init=False)
    #: When a process pauses, reset Restate's side of its connections at once (Restate retries
    #: within its backoff), or leave it silent so Restate must give up by its own timeouts
    #: (``reset_restate_side`` then lets the retry reach the standby).
    reset_zombie_connections_at_once: bool = field(default=True, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _watcher: threading.Thread | None = field(default=None, init=False)
    _restarts: list[threading.Thread] = field(default_factory=list, init=False)
    # Every child process is started from these long-lived threads: the children ask the kernel
    # for a signal when their parent dies (PR_SET_PDEATHSIG), and "parent" there means the
    # *thread* that forked them. A child forked from a short-lived thread would be sent SIGTERM
    # the moment that thread ends.
    _spawner: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="chaos-spawner"),
        init=False,
    )
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
        self.slots = []
        for name in ("service-1", "service-2"):
            port = free_port()
            slot_settings = self.settings.model_copy(update={"service_port": port})
            service = ServiceProcess(slot_settings, home / "logs" / f"{name}.log", extra_env=env)
            self.slots.append(ServiceSlot(name, port, service))
        self.active = self.slots[0]
        self.proxy = SwitchableProxy(self.settings.bind_host, self.settings.service_port, 0)

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    def create(cls, token_ttl: timedelta = CHAOS_TOKEN_TTL, nodes: int = 1) -> ChaosStack:
        """A stack in a fresh temporary folder the ``postgres`` OS user can reach."""
        home = Path(tempfile.mkdtemp(prefix="dbpatterns-chaos-"))
        home.chmod(0o755)
        return cls(home, token_ttl, nodes)

    def start(self) -> None:
        try:
            self._spawn(self.postgres.start)
            migrate.migrate(self.settings.libpq_url)
            if self.network is not None:
                self.network.start()
            self.start_restate()
            threads = [
                threading.Thread(target=self._start_slot, args=(slot,)) for slot in self.slots
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(slot.state != "ready" for slot in self.slots):
                raise LabError("a service process of the chaos stack did not come up")
            self.proxy.target_port = self.active.port
            self.proxy.start()
            # In a cluster the nodes reach the proxy through the network, so a partition cuts
            # a node off from the service too.
            service = self.proxy.url if self.network is None else self.network.address(SERVICE)
            register_deployment(self.settings.admin_url, service)
            self._watcher = threading.Thread(target=self._watch, name="chaos-watcher", daemon=True)
            self._watcher.start()
        except BaseException:
            self.stop()
            raise

    def stop(self, remove: bool = True) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for thread in self._restarts:
            thread.join(40)  # a process being started is stopped below, not left behind
        for zombie in self.zombies:
            self.faults.paused_died += 1
            with contextlib.suppress(Exception):
                self._kill_slot(zombie.slot)
        for slot in self.slots:
            with contextlib.suppress(Exception):
                slot.service.stop()
        self.proxy.close()
        if self.network is not None:
            self.network.close()
        if self._admin is not None:
            self._admin.close()
        with contextlib.suppress(Exception):
            self.restate.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        self._spawner.shutdown(wait=False, cancel_futures=True)
        if remove:
            shutil.rmtree(self.home, ignore_errors=True)

    def _spawn(self, start: Callable[[], T]) -> T:
        """Run ``start`` (which starts a child process) on a long-lived spawner thread."""
        return self._spawner.submit(start).result()

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
        if not isinstance(self.restate, RestateCluster):
            raise LabError(
                "this chaos stack runs a single restate-server", "create it with nodes=3"
            )
        return self.restate

    # --- the service pair --------------------------------------------------------------------

    def _start_slot(self, slot: ServiceSlot) -> None:
        slot.state = "starting"
        for _ in range(3):
            try:
                process = self._spawn(lambda: slot.service.start(timeout=30))
            except LabError as exc:
                log.warning("%s did not start: %s", slot.name, exc)
                continue
            slot.pid = process.pid
            slot.state = "ready"
            with self._lock:
                if self.active.state not in ("ready",):
                    self._make_active(slot)
            return
        slot.state = "dead"

    def _restart_in_background(self, slot: ServiceSlot) -> None:
        if self._stop.is_set():
            return
        thread = threading.Thread(
            target=self._start_slot, args=(slot,), name=f"restart-{slot.name}", daemon=True
        )
        self._restarts = [t for t in self._restarts if t.is_alive()] + [thread]
        thread.start()

    def _make_active(self, slot: ServiceSlot) -> None:
        self.active = slot
        self.proxy.switch(slot.port)

    def _failover(self, from_slot: ServiceSlot) -> None:
        """Send new connections to the other slot if it is ready (else to whichever is up first)."""
        other = next(s for s in self.slots if s is not from_slot)
        if other.state == "ready":
            self._make_active(other)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                for slot in self.slots:
                    self._check(slot)
                if self.auto_resume_after is not None:
                    for zombie in list(self.zombies):
                        if time.monotonic() - zombie.paused_at >= self.auto_resume_after:
                            self._resume_zombie(zombie)

    def _check(self, slot: ServiceSlot) -> None:
        process = slot.service.process
        if process is None or slot.state not in ("ready", "zombie"):
            return
        if not process.alive():
            if slot.state == "ready":
                self.faults.service_killed += 1
                log.warning("%s died (pid %s): failing over, restarting it", slot.name, slot.pid)
            slot.state = "dead"
            died_paused = [z for z in self.zombies if z.slot is slot]
            self.faults.paused_died += len(died_paused)
            self.zombies = [z for z in self.zombies if z.slot is not slot]
            self.proxy.release(slot.port)
            if self.active is slot:
                self._failover(slot)
            self._restart_in_background(slot)
        elif slot.state == "ready" and procfs.state(process.pid) == "T":
            self.faults.service_paused += 1
            slot.state = "zombie"
            if self.active is slot:
                self._failover(slot)
            reset = self.reset_zombie_connections_at_once
            cut = self.proxy.partition(slot.port, reset=reset)
            self.zombies.append(Zombie(slot, slot.pid, time.monotonic(), cut, reset))
            log.warning(
                "%s paused (pid %s): %d connection(s) from Restate %s; it is a zombie now",
                slot.name,
                slot.pid,
                cut,
                "reset" if reset else "silenced",
            )

    def wait_for_zombie(self, timeout: float = 30.0) -> Zombie:
        if not wait_until(lambda: bool(self.zombies), timeout, interval=0.02):
            raise TimeoutError(f"no service process paused within {timeout:g} s")
        return self.zombies[0]

    def reset_restate_side(self, zombie: Zombie) -> int:
        """Reset Restate's side of a zombie's silenced connections (the zombie's stays open)."""
        zombie.restate_side_reset = True
        return self.proxy.reset_restate_side(zombie.slot.port)

    def resume_zombie(self, zombie: Zombie, linger: float = 1.5) -> None:
        """Wake the zombie, let it run for ``linger`` seconds, then kill and replace it."""
        with self._lock:
            self._resume_zombie(zombie, linger=0)
        time.sleep(linger)
        with self._lock:
            self._retire(zombie.slot, zombie.pid)

    def _resume_zombie(self, zombie: Zombie, linger: float = 1.5) -> None:
        process = zombie.slot.service.process
        # Noted before SIGCONT: a statement on a dead session fails within microseconds of the
        # resume, and must not be counted as if it ran before it.
        zombie.resumed_at = time.time()
        if process is not None:
            process.resume()
        self.faults.zombies_resumed += 1
        self.resumed.append(zombie)
        self.zombies.remove(zombie)
        log.warning("%s resumed as a zombie (pid %s)", zombie.slot.name, zombie.slot.pid)
        if linger > 0:
            # Automatic mode (the watcher's thread): retire it later, off this thread.
            timer = threading.Timer(linger, self._retire_locked, args=(zombie.slot, zombie.pid))
            timer.daemon = True
            timer.start()

    def _retire_locked(self, slot: ServiceSlot, pid: int | None) -> None:
        with self._lock:
            self._retire(slot, pid)

    def _retire(self, slot: ServiceSlot, pid: int | None) -> None:
        """Kill the resumed zombie ``pid`` of ``slot`` and start the slot afresh. Nothing if the
        slot runs another process by now: a zombie that died by itself after its resume (a
        failpoint's kill) is replaced at once, and its successor may be paused in its turn."""
        if slot.state != "zombie" or slot.pid != pid:
            return
        self._kill_slot(slot)
        slot.state = "dead"
        self._restart_in_background(slot)

    def _kill_slot(self, slot: ServiceSlot) -> None:
        process = slot.service.process
        if process is not None:
            process.resume()
            process.kill()
        self.proxy.release(slot.port)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until both service processes serve and no zombie is left."""
        if not wait_until(
            lambda: all(s.state == "ready" for s in self.slots) and not self.zombies,
            timeout,
            interval=0.05,
        ):
            states = ", ".join(s.describe() for s in self.slots)
            raise LabError(f"the service processes did not settle: {states}")

    def quiesce(self, timeout: float = 60.0) -> None:
        """Until no process of the service is paused or lingering as a resumed zombie, and no
        session of the service is running a statement or holding a transaction open: from then
        on, nothing the cell started can still write. Paused processes are resumed first."""
        with self._lock:
            for zombie in list(self.zombies):
                self._resume_zombie(zombie)

        def quiet() -> bool:
            if self.zombies or any(s.state == "zombie" for s in self.slots):
                return False
            return self.busy_service_sessions() == 0

        if not wait_until(quiet, timeout, interval=0.1):
            states = ", ".join(s.describe() for s in self.slots)
            raise LabError(
                f"the stack did not quiesce within {timeout:g} s: {states}; "
                f"{self.busy_service_sessions()} busy service session(s)"
            )

    def busy_service_sessions(self) -> int:
        """Sessions of the service that are not idle (a statement or a transaction open)."""
        return self._service_sessions(BUSY_SESSIONS)

    def sessions_waiting_for_a_lock(self) -> int:
        return self._service_sessions(SESSIONS_WAITING_FOR_A_LOCK)

    def _service_sessions(self, query: str) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(query, (APPLICATION_NAME,)).fetchone()
        return int(row[0]) if row else 0

    # --- faults on the other parts ---------------------------------------------------------

    def kill_restate(self) -> None:
        """SIGKILL restate-server (a crash: no shutdown runs)."""
        if isinstance(self.restate, RestateCluster):
            raise LabError("a cluster loses one node at a time: kill_node", "use kill_node")
        if self.restate.process is not None:
            self.restate.process.kill()
        self.faults.restate_killed += 1
        log.warning("restate-server killed")

    def start_restate(self) -> None:
        restate = self.restate
        if isinstance(restate, RestateCluster):
            self._spawn(restate.start)
            # Ready is not yet settled: leaders still move for a while after the first start,
            # and each move restarts the attempts in flight (a node-fault cell then finds its
            # calls answered before its fault).
            if not restate.settled():
                raise LabError("the Restate cluster did not settle after it started", "")
        else:
            self._spawn(lambda: restate.start(env=CHAOS_RESTATE_ENV))
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def restart_restate(self) -> None:
        self.kill_restate()
        self.start_restate()

    # --- faults on the nodes of a cluster --------------------------------------------------

    def kill_node(self, name: str) -> None:
        """SIGKILL one restate-server node of the cluster."""
        self.cluster.kill(name)
        self.faults.nodes_killed += 1
        log.warning("restate node %s killed", name)

    def pause_node(self, name: str) -> None:
        """SIGSTOP one node: it hangs with its connections open, a cluster-level zombie."""
        self.cluster.pause(name)
        self.faults.nodes_paused += 1
        log.warning("restate node %s paused", name)

    def resume_node(self, name: str) -> None:
        self.cluster.resume(name)
        self.faults.nodes_resumed += 1
        log.warning("restate node %s resumed", name)

    def isolate_node(self, name: str) -> int:
        """Partition one node from the other nodes and from the service (``LoopbackNetwork``);
        returns how many of its connections went silent."""
        if self.network is None:
            raise LabError("this chaos stack has no network to partition", "use nodes=3")
        held = self.network.isolate(name)
        self.faults.nodes_isolated += 1
        log.warning("restate node %s cut off from its peers and the service", name)
        return held

    def heal_node(self, name: str) -> None:
        assert self.network is not None
        self.network.heal(name)
        self.faults.nodes_healed += 1
        log.warning("restate node %s reachable again", name)

    def _node_pids(self) -> dict[str, int]:
        """Node name -> pid of the nodes running now: the network tells partners apart so."""
        if not isinstance(self.restate, RestateCluster):
            return {}
        return {n.name: pid for n in self.restate.nodes if (pid := n.pid) is not None}

    def restart_node(self, name: str) -> None:
        """Start a killed node again on its data; return once the cluster is ready again."""
        self._spawn(lambda: self.cluster.restart(name))
        if not self.cluster.settled():
            raise LabError(f"the cluster did not settle after {name} restarted", "")

    def leader_of(self, invocation_id: str) -> str | None:
        """The node leading the partition of ``invocation_id`` (asked through a node that
        answers), or None."""
        key = self.partition_key(invocation_id)
        return None if key is None else self.cluster.leader_of(key)

    def partition_key(
        self, invocation_id: str, seen_from: Sequence[str] | None = None
    ) -> int | None:
        """The partition key of ``invocation_id`` (which partition holds it), asked of the
        nodes ``seen_from`` (by default any) until one answers; None if none knows it."""
        if not INVOCATION_ID.fullmatch(invocation_id):  # Restate's SQL takes no parameters
            raise ValueError(f"not a Restate invocation id: {invocation_id!r}")
        for node in self.cluster.nodes:
            if (seen_from is not None and node.name not in seen_from) or not node.answers():
                continue
            admin = Admin(node.address.admin_url, timeout=10)
            try:
                rows = admin.query(
                    "SELECT partition_key FROM sys_invocation_status "  # noqa: S608
                    f"WHERE id = '{invocation_id}'"
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "%s could not tell the partition of %s: %s", node.name, invocation_id, exc
                )
                continue
            finally:
                admin.close()
            if rows:
                return int(rows[0]["partition_key"])
        return None

    def restart_postgres(self) -> None:
        """Immediate shutdown (no checkpoint, every session cut), then start: crash recovery."""
        self.postgres.crash()
        self.faults.postgres_restarted += 1
        log.warning("postgres stopped (immediate), starting again")
        self._spawn(self.postgres.start)

    def kill_invocation(self, invocation_id: str) -> None:
        """Kill an invocation through Restate's admin API (``restate invocations kill``)."""
        response = self.admin.http.patch(f"/invocations/{invocation_id}/kill")
        response.raise_for_status()
        self.faults.invocations_killed += 1
        log.warning("invocation %s killed through the admin API", invocation_id)

    def cancel_invocation(self, invocation_id: str) -> None:
        """Cancel an invocation through Restate's admin API (``restate invocations cancel``)."""
        response = self.admin.http.patch(f"/invocations/{invocation_id}/cancel")
        response.raise_for_status()
        self.faults.invocations_cancelled += 1
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
        self.faults.terminate_events += 1
        self.faults.sessions_terminated += count
        log.warning("terminated %d service connection(s)", count)
        return count
