"""The chaos stack's service: two processes ("slots") behind a switchable proxy, and the watcher
that keeps it available.

Each slot is one process (``dbpatterns.service.serve``) on its own port, both reading the same
failpoint control file; the ``SwitchableProxy`` in front of them is registered as the deployment
URI. One slot is active (the proxy's target); the other is a warm standby.

A watcher thread keeps the service available, as an orchestrator would: when the active process
dies (a failpoint's ``kill``), the proxy switches to the standby and the dead one is restarted
in the background; when it stops (a failpoint's ``pause``), the proxy switches and cuts Restate
off from the paused process (see ``dbpatterns.testing.proxy``), which then lives on as a zombie
until the harness resumes it (``resume_zombie``). Both are counted as they are seen
(``FaultCounts``: ``service_killed``, ``service_paused``, and how each pause ended).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import psycopg

from chaos.faults import FaultCounts
from chaos.spawner import Spawner
from dbpatterns.service.db import APPLICATION_NAME
from dbpatterns.stack import LabError, ServiceProcess, procfs, wait_until
from dbpatterns.testing.proxy import SwitchableProxy

log = logging.getLogger("chaos")

BUSY_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = %s AND state IS DISTINCT FROM 'idle'"
)
SESSIONS_WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
)


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
class Zombie:
    """A paused service process that Restate has been cut off from."""

    slot: ServiceSlot
    pid: int | None
    paused_at: float
    connections_cut: int
    restate_side_reset: bool  # False: Restate's side is silent until ``reset_restate_side``
    resumed_at: float | None = None  # wall clock (``time.time()``), as the SQL trace has it


class ServicePair:
    """Two service processes behind one proxy, watched; the zombies their pauses leave."""

    def __init__(
        self,
        slots: list[ServiceSlot],
        proxy: SwitchableProxy,
        counts: FaultCounts,
        spawner: Spawner,
        database_url: str,
    ) -> None:
        self.slots = slots
        self.proxy = proxy
        self.counts = counts
        self._spawner = spawner
        self.database_url = database_url
        self.active = slots[0]
        self.zombies: list[Zombie] = []  # paused now
        self.resumed: list[Zombie] = []  # every zombie resumed so far
        self.auto_resume_after: float | None = None
        #: When a process pauses, reset Restate's side of its connections at once (Restate
        #: retries within its backoff), or leave it silent so Restate must give up by its own
        #: timeouts (``reset_restate_side`` then lets the retry reach the standby).
        self.reset_zombie_connections_at_once = True
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._restarts: list[threading.Thread] = []

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start both processes, then the proxy in front of the active one."""
        threads = [threading.Thread(target=self._start_slot, args=(slot,)) for slot in self.slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(slot.state != "ready" for slot in self.slots):
            raise LabError("a service process of the chaos stack did not come up")
        self.proxy.target_port = self.active.port
        self.proxy.start()

    def watch(self) -> None:
        """Start the watcher (once the proxy is registered as the deployment)."""
        self._watcher = threading.Thread(target=self._watch, name="chaos-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for thread in self._restarts:
            thread.join(40)  # a process being started is stopped below, not left behind
        for zombie in self.zombies:
            self.counts.paused_died += 1
            with contextlib.suppress(Exception):
                self._kill_slot(zombie.slot)
        for slot in self.slots:
            with contextlib.suppress(Exception):
                slot.service.stop()
        self.proxy.close()

    # --- the processes and the watcher -----------------------------------------------------------

    def _start_slot(self, slot: ServiceSlot) -> None:
        slot.state = "starting"
        for _ in range(3):
            try:
                process = self._spawner.run(lambda: slot.service.start(timeout=30))
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
                self.counts.service_killed += 1
                log.warning("%s died (pid %s): failing over, restarting it", slot.name, slot.pid)
            slot.state = "dead"
            died_paused = [z for z in self.zombies if z.slot is slot]
            self.counts.paused_died += len(died_paused)
            self.zombies = [z for z in self.zombies if z.slot is not slot]
            self.proxy.release(slot.port)
            if self.active is slot:
                self._failover(slot)
            self._restart_in_background(slot)
        elif slot.state == "ready" and procfs.state(process.pid) == "T":
            self.counts.service_paused += 1
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

    # --- zombies ---------------------------------------------------------------------------------

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
        self.counts.zombies_resumed += 1
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

    # --- settled and quiet -----------------------------------------------------------------------

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
