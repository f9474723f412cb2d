"""The user's service under test: its app served in a process of its own, behind a proxy that
restate-server knows as the deployment, kept available as an orchestrator would keep it.

* A **kill** at a fault point ends the process; the watcher starts another, and Restate's retry
  runs there.
* A **freeze** stops the process (SIGSTOP) in the middle of an attempt; the watcher starts
  another, points the proxy at it and cuts Restate's side of the frozen process's connections,
  so Restate retries at once while the frozen process's own side stays open and silent. The
  frozen process becomes a ``Zombie``: the test lets it go (``release``) after the retry has
  answered, and asks Postgres (``ran_sql``) whether its SQL reached the database after it
  resumed. Each process's connections carry an application name of their own (``PGAPPNAME``,
  unless the app's connection string sets another), which is how Postgres's log tells them apart.
* **Cancel** and **kill** of an invocation go through restate-server's admin API.

Every call carries an idempotency key and is resolved to a definite answer (``Operation``):
an answer that says "not now" (502, 503, 504, a dropped connection) is asked again with the
same key, which Restate answers with the first invocation's result.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dbpatterns.testing.control import Action, Control, Fault, Struck
from dbpatterns.testing.postgres import Postgres, Statement
from dbpatterns.testing.processes import Child, KitError, environment, free_port, spawn, tail
from dbpatterns.testing.processes import wait_until as poll
from dbpatterns.testing.proxy import SwitchableProxy
from dbpatterns.testing.restate import Admin, Restate, post
from dbpatterns.testing.verdict import Operation, Outcome, outcome_of

#: The application name of process ``n``'s database connections.
APP_NAME = "dbpatterns-kit-{n}"
#: Restate's invocation ids: ``inv_`` and base62.
INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]+")
WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
    " AND wait_event_type = 'Lock'"
)
INVOCATION_ROW = (
    "SELECT id, target, status, completion_result, completion_failure, retry_count "
    "FROM sys_invocation"
)
#: Sessions of the service's processes that are in a statement or a transaction.
BUSY_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name LIKE %s AND state IS DISTINCT FROM 'idle'"
)


@dataclass
class Process:
    """One process of the service: a child serving the app on its own port."""

    n: int
    port: int
    child: Child

    @property
    def application_name(self) -> str:
        return APP_NAME.format(n=self.n)


@dataclass
class Zombie:
    """A process frozen in the middle of an attempt, whose invocation went on elsewhere."""

    process: Process
    struck: Struck
    _service: ServedApp
    released_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.child.pid

    def release(self) -> None:
        """Let it go on (SIGCONT), as a paused VM or a process back from a long GC would."""
        self.released_at = time.time()
        self.process.child.send(signal.SIGCONT)

    def statements_after_release(self) -> list[Statement]:
        """What Postgres received from this process, or refused it, since its release."""
        if self.released_at is None:
            return []
        name = self.process.application_name
        return [s for s in self._service.postgres.statements(name) if s.at >= self.released_at]

    def ran_sql(self, timeout: float = 30.0) -> bool:
        """Did Postgres receive SQL from it after its release? Waits up to ``timeout`` for its
        first statement, then for its sessions to leave any transaction, so that whatever it
        was going to commit has committed (or never will) when this returns True."""
        if not poll(lambda: bool(self.statements_after_release()), timeout, interval=0.2):
            return False
        return poll(lambda: not self._in_transaction(), timeout, interval=0.2)

    def _in_transaction(self) -> bool:
        with psycopg.connect(self._service.postgres.url, autocommit=True) as conn:
            row = conn.execute(BUSY_SESSIONS, (self.process.application_name,)).fetchone()
        return bool(row and row[0])

    def end(self) -> None:
        """Close what is left of its connections and kill it (a zombie has nothing to finish)."""
        self._service.proxy.release(self.process.port)
        self.process.child.stop(signal.SIGKILL)


@dataclass
class ServedApp:
    """The app ``spec`` (``module:app``), served and registered; see the module docstring."""

    spec: str
    workdir: Path
    cwd: Path
    env: dict[str, str]
    postgres: Postgres
    restate: Restate
    processes: list[Process] = field(default_factory=list)
    zombies: list[Zombie] = field(default_factory=list)
    #: Processes that died while serving (each a crash the watcher replaced).
    deaths: int = 0

    def __post_init__(self) -> None:
        self.control = Control(self.workdir / "control")
        self.admin = Admin(self.restate.admin_url)
        self.proxy = SwitchableProxy("127.0.0.1", free_port(), 0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._calls = ThreadPoolExecutor(8, thread_name_prefix="kit-call")
        self._watcher = threading.Thread(target=self._watch, name="kit-watcher", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._killed: set[str] = set()
        self._seen = 0

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._watcher.start()  # starts the first process from its own (long-lived) thread
        self._ready.wait(60)
        if self._failure is not None:
            raise self._failure
        if not self._ready.is_set():
            raise KitError(f"the service did not start:\n{self.log_tail()}")
        self.proxy.switch(self.active.port)
        self.proxy.start()
        self.admin.register(self.proxy.url)

    def stop(self) -> None:
        self._stopping.set()
        self._watcher.join(10)
        self._calls.shutdown(wait=False, cancel_futures=True)
        for zombie in self.zombies:
            zombie.end()
        for process in self.processes:
            process.child.stop()
        self.proxy.close()

    def _spawn(self) -> Process:
        n = len(self.processes) + 1
        port = free_port()
        argv = [sys.executable, "-m", "dbpatterns.testing.served", self.spec]
        argv += ["--port", str(port), "--control", str(self.control.folder)]
        env = environment(self.env | {"PGAPPNAME": APP_NAME.format(n=n)})
        child = spawn(
            f"service {n}", argv, self.workdir / f"service-{n}.log", env=env, cwd=self.cwd
        )
        process = Process(n, port, child)
        self.processes.append(process)
        if not poll(lambda: _listening(port) or not child.alive(), 60):
            raise KitError(f"the service did not listen on {port}:\n{tail(child.log_path)}")
        if not child.alive():
            raise KitError(f"the service exited at its start:\n{tail(child.log_path)}")
        return process

    @property
    def active(self) -> Process:
        return self.processes[-1]

    def _watch(self) -> None:
        try:
            self._spawn()
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        while not self._stopping.wait(0.05):
            with self._lock:
                process = self.active
                if not process.child.alive():
                    self.deaths += 1
                    self.proxy.switch(self._spawn().port)
                elif process.child.stopped():
                    frozen = [s for s in self.control.struck() if s.pid == process.child.pid]
                    self.zombies.append(Zombie(process, frozen[-1], self))
                    self.proxy.switch(self._spawn().port)
                    self.proxy.partition(process.port)

    def log_tail(self) -> str:
        return "\n".join(tail(p.child.log_path) for p in self.processes)

    def log_text(self) -> str:
        """Every process's log, oldest first."""
        return "\n".join(p.child.log_path.read_text(errors="replace") for p in self.processes)

    # --- faults ------------------------------------------------------------------------------

    def arm(
        self, point: str, action: Action | str, *, times: int = 1, seconds: float = 3.0
    ) -> None:
        """Arm ``action`` at the fault point ``point`` (``<service>.<handler>.<point>``) for the
        next ``times`` attempts that reach it, in whichever process."""
        self.control.arm(point, Fault(Action(action), times, seconds))

    def disarm(self) -> None:
        self.control.disarm_all()

    def begin_test(self) -> None:
        """From now on, ``struck`` and ``wait_struck`` see only the faults that fire from now."""
        self._seen = len(self.control.struck())

    def struck(self, point: str | None = None, invocation_id: str | None = None) -> list[Struck]:
        """The faults that fired in this test (not the resumptions), at ``point`` and in the
        invocation ``invocation_id``, or anywhere."""
        return [
            s
            for s in self.control.struck()[self._seen :]
            if s.event == "struck"
            and (point is None or s.point == point)
            and (invocation_id is None or s.invocation_id == invocation_id)
        ]

    def wait_struck(self, point: str, timeout: float = 30.0) -> Struck:
        """The first firing at ``point``, once it has happened."""
        if not poll(lambda: bool(self.struck(point)), timeout):
            raise AssertionError(f"no fault fired at {point} within {timeout:.0f} s")
        return self.struck(point)[0]

    def wait_zombie(self, timeout: float = 60.0) -> Zombie:
        """The first zombie of this test, once its process froze and the retry was sent on."""
        if not poll(lambda: bool(self.zombies), timeout):
            raise AssertionError(f"no process froze within {timeout:.0f} s")
        return self.zombies[0]

    def waiting_for_a_lock(self) -> int:
        """How many of the service's sessions wait for a lock now: a retry waiting for the row
        a frozen attempt's open transaction holds (release the zombie then, or the retry waits
        until the transaction's time is up)."""
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            row = conn.execute(WAITING_FOR_A_LOCK, ("dbpatterns-kit-%",)).fetchone()
        return int(row[0]) if row else 0

    def cancel(self, invocation_id: str) -> None:
        self.admin.cancel(invocation_id)

    def kill_invocation(self, invocation_id: str) -> None:
        """Kill the invocation; a call of it that does not answer 200 is judged ``killed``."""
        self._killed.add(invocation_id)
        self.admin.kill(invocation_id)

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """Restate's row of the invocation in ``sys_invocation`` (status, completion)."""
        if not INVOCATION_ID.fullmatch(invocation_id):
            raise ValueError(f"not an invocation id: {invocation_id!r}")
        # Restate's query API takes no parameters; the id was checked against its form above.
        query = f"{INVOCATION_ROW} WHERE id = '{invocation_id}'"
        rows = self.admin.query(query)
        return rows[0] if rows else {}

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no fault holds an attempt and no process of the service is in a
        transaction: whatever was on its way to COMMIT has landed, or never will."""
        holds = [s.at + s.seconds for s in self.struck()]
        time.sleep(max(0.0, max(holds, default=0.0) - time.time()))
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:

            def quiet() -> bool:
                row = conn.execute(BUSY_SESSIONS, ("dbpatterns-kit-%",)).fetchone()
                return not (row and row[0])

            if not poll(quiet, timeout, interval=0.1):
                raise AssertionError(f"the service's sessions stayed busy for {timeout:.0f} s")

    def cancellation_reached(self, invocation_id: str) -> bool:
        """Did a clean-up of the library log that a call of ``invocation_id`` ended cancelled?"""
        return any(
            f"call {invocation_id}:" in line and "ended with 'cancelled'" in line
            for line in self.log_text().splitlines()
        )

    # --- calls -------------------------------------------------------------------------------

    def call(
        self,
        target: str,
        body: Any,
        *,
        subject: str | None = None,
        idempotency_key: str | None = None,
        deadline: float = 120.0,
    ) -> Operation:
        """Call ``target`` (``service/handler`` or ``object/key/handler``) with ``body`` and an
        idempotency key, until Restate gives a definite answer for that key or ``deadline``
        seconds pass. ``subject``: the operation's own row, for ``judge`` (default: the key)."""
        key = idempotency_key or f"kit-{uuid.uuid4()}"
        op = Operation(target, body, key, subject or key)
        give_up = time.monotonic() + deadline
        pause = 0.1
        while True:
            op.requests += 1
            try:
                answer = post(
                    f"{self.restate.ingress_url}/{target.strip('/')}",
                    json.dumps(body).encode(),
                    {"content-type": "application/json", "idempotency-key": key},
                    timeout=max(1.0, min(30.0, give_up - time.monotonic())),
                )
            except OSError as exc:
                op.answer = f"{type(exc).__name__}: {exc}"
            else:
                op.status, op.answer = answer.status, answer.body[:500]
                op.invocation_id = answer.invocation_id or op.invocation_id
                outcome = outcome_of(answer.status)
                if outcome == Outcome.FAILED and op.invocation_id in self._killed:
                    outcome = Outcome.KILLED
                if outcome is not None:
                    op.outcome = outcome
                    return op
            if time.monotonic() >= give_up:
                op.outcome = Outcome.UNKNOWN
                return op
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def call_in_background(self, target: str, body: Any, **options: Any) -> Future[Operation]:
        """``call``, in a thread of its own: for a test that acts while the call is in flight."""
        return self._calls.submit(self.call, target, body, **options)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
