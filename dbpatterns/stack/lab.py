"""The lab as a whole: Postgres, restate-server and the service of one working folder, started
in order and stopped newest first, with a state file that ``./lab status`` reads."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbpatterns import migrate
from dbpatterns.config import Settings
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

STATE_FILE_NAME = "stack.json"


@dataclass
class Stack:
    """Postgres, restate-server and the service of one working folder (``settings.home``)."""

    settings: Settings
    postgres: PostgresServer = field(init=False)
    restate: RestateServer = field(init=False)
    service: ServiceProcess = field(init=False)
    created_database: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        home = self.settings.home
        self.postgres = PostgresServer(self.settings, home / "postgres")
        self.restate = RestateServer(self.settings, home / "restate")
        self.service = ServiceProcess(self.settings, home / "logs" / "service.log")

    @property
    def state_file(self) -> Path:
        return self.settings.home / STATE_FILE_NAME

    def ports(self) -> dict[str, tuple[str, int]]:
        s = self.settings
        return {
            "postgres": (s.bind_host, self.postgres.port),
            "restate ingress": (s.bind_host, s.ingress_port),
            "restate admin": (s.bind_host, s.admin_port),
            "restate node": (s.bind_host, s.restate_node_port),
            "service": (s.bind_host, s.service_port),
        }

    def preflight(self) -> None:
        """Everything that can be checked before a process starts: binaries, ports."""
        _ = self.postgres.bin_dir
        find_restate_binary("restate-server", "restate-server", self.settings.restate_bin)
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
            say("restate-server: starting")
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
        parts = (self.postgres.process, self.restate.process, self.service.process)
        return [p for p in parts if p is not None]

    def describe(self) -> dict[str, Any]:
        s = self.settings
        pids = {c.name: c.pid for c in self.children()}
        return {
            "home": str(s.home),
            "database_url": s.libpq_url,
            "ingress_url": s.ingress_url,
            "admin_url": s.admin_url,
            "service_url": s.service_url,
            "parts": {
                "postgres": {
                    "address": f"{s.bind_host}:{self.postgres.port}",
                    "pid": pids.get("postgres"),
                },
                "restate-server": {"address": s.admin_url, "pid": pids.get("restate-server")},
                "service": {"address": s.service_url, "pid": pids.get("service")},
            },
        }

    def write_state(self) -> None:
        self.state_file.write_text(json.dumps(self.describe(), indent=2))


def lab_running(home: Path) -> bool:
    """Does an `up` of this working folder still run any of its parts?"""
    return bool(parts_alive(home))


def parts_alive(home: Path) -> dict[str, int]:
    """The parts an `up` of this working folder started that still run: {name: pid}."""
    state = read_state(home)
    if state is None:
        return {}
    return {
        name: int(part["pid"])
        for name, part in state["parts"].items()
        if part.get("pid") and pid_alive(int(part["pid"]))
    }


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((home / STATE_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state


def probe(settings: Settings) -> dict[str, Any]:
    """Is each part up? From the state file of a running ``up`` plus live checks."""
    state = read_state(settings.home) or Stack(settings).describe()
    checks: dict[str, Callable[[], bool]] = {
        "postgres": lambda: pg_up(settings.libpq_url),
        "restate-server": lambda: http_ok(f"{settings.admin_url}/health"),
        "service": lambda: http_ok(f"{settings.service_url}/health"),
    }
    for name, part in state["parts"].items():
        pid = part.get("pid")
        part["running"] = bool(pid and pid_alive(pid))
        part["healthy"] = checks[name]()
    # Up means: our `up` runs these parts (state file, live PIDs) and each answers its check.
    state["up"] = all(p["healthy"] and p["running"] for p in state["parts"].values())
    return state


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
