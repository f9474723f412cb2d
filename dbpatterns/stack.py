"""The embedded local stack: a real PostgreSQL, a real restate-server and the service, as processes.

One implementation of "start Postgres / restate-server / the service" serves ``./lab up``,
the test fixtures and the chaos harness. Each part is a child process whose real PID we own (no
wrapper scripts in between), so it can be stopped, killed or paused as a whole:

* ``PostgresServer`` initialises (first run) or reuses a data directory, starts ``postgres`` on
  the configured host and port with ``db/postgresql.conf`` included, and creates the database.
  As root it runs the server as the ``postgres`` OS user, because ``initdb`` refuses root.
* ``RestateServer`` runs the ``restate-server`` binary from the npm package with the lab's own
  timeouts (``RestateTuning``), its data under the working folder.
* ``ServiceProcess`` runs the service under hypercorn, one process, HTTP/2 cleartext.

Every failure a user can act on (a missing binary, a busy port, a part that does not come up)
is a ``LabError`` carrying what went wrong and what to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
from psycopg import sql

from dbpatterns import identity, migrate
from dbpatterns.config import PROJECT_ROOT, RestateTuning, Settings

PG_CONF = PROJECT_ROOT / "db" / "postgresql.conf"
PG_INCLUDE_NAME = "dbpatterns.conf"
STATE_FILE_NAME = "stack.json"


class LabError(Exception):
    """A problem the user can act on: what went wrong, and what to do about it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem}\n  hint: {self.hint}" if self.hint else self.problem


# --- small helpers ---------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_free_ports(ports: Mapping[str, tuple[str, int]]) -> None:
    busy = [
        (what, host, port) for what, (host, port) in ports.items() if not port_is_free(host, port)
    ]
    if busy:
        lines = ", ".join(f"{what} {host}:{port}" for what, host, port in busy)
        raise LabError(
            f"port already in use: {lines}",
            "stop whatever listens there (is the lab already up? try `./lab status`), "
            "or choose other ports with DBPATTERNS_INGRESS_PORT, DBPATTERNS_ADMIN_PORT, "
            "DBPATTERNS_RESTATE_NODE_PORT, DBPATTERNS_SERVICE_PORT or the port in "
            "DBPATTERNS_DATABASE_URL",
        )


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec hook: the child gets ``sig`` if the lab process dies without cleaning up."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, sig)

    return hook


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(interval)
    return check()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class RunAs:
    """The OS user a child runs as (only Postgres, only when the lab runs as root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def postgres_if_root(cls) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise LabError(
                "running as root, but there is no `postgres` OS user to run the server as "
                "(initdb refuses to run as root)",
                "install the PostgreSQL server package (it creates the user), "
                "or run the lab as an unprivileged user",
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def check_reachable(self, path: Path) -> None:
        """The user must be able to walk down to ``path``; say which folder blocks it if not."""
        for parent in reversed(path.parents):
            st = parent.stat()
            if st.st_uid != self.uid and not st.st_mode & 0o001:
                raise LabError(
                    f"the `{self.name}` OS user, which runs PostgreSQL here, cannot reach "
                    f"{path}: {parent} is not searchable by other users",
                    f"set DBPATTERNS_HOME to a folder under a world-searchable path "
                    f"(e.g. /var/tmp/dbpatterns), or `chmod o+x {parent}`",
                )


# --- processes ---------------------------------------------------------------------------------


@dataclass
class ChildProcess:
    """A started part of the stack: its process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Ask the process to stop with ``sig``; SIGKILL it if it has not after ``timeout``."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # A paused process cannot act on its signal: wake it first.
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs in the process."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(10)

    def pause(self) -> None:
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
    death_signal: int = signal.SIGTERM,
) -> ChildProcess:
    """Start ``argv`` in its own session (a Ctrl-C reaches the lab, which then stops its parts
    in order), with output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes]
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                preexec_fn=_die_with_parent(death_signal),
            )
        except FileNotFoundError as exc:
            raise LabError(f"cannot start {name}: {exc}") from exc
    return ChildProcess(name, popen, log_path)


# --- PostgreSQL --------------------------------------------------------------------------------


def find_pg_bin_dir(configured: Path | None) -> Path:
    """The folder holding ``initdb`` and ``postgres``: configured, or the newest one installed."""
    if configured is not None:
        if (configured / "initdb").is_file() and (configured / "postgres").is_file():
            return configured
        raise LabError(
            f"DBPATTERNS_PG_BIN_DIR={configured} holds no `initdb` and `postgres`",
            "point it at the bin folder of a PostgreSQL server installation, or unset it",
        )
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    candidates += [Path("/usr/local/pgsql/bin"), Path("/opt/homebrew/bin"), Path("/usr/local/bin")]
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise LabError(
        "no PostgreSQL server binaries found (looked for `initdb` and `postgres` in "
        "/usr/lib/postgresql/*/bin, `pg_config --bindir` and PATH)",
        "install the server (Debian/Ubuntu: `apt-get install postgresql`), set "
        "DBPATTERNS_PG_BIN_DIR to its bin folder, or point DBPATTERNS_DATABASE_URL at a "
        "running server and use the test fixtures' external mode",
    )


class PostgresServer:
    """A PostgreSQL server of our own in ``<root>/data``, serving ``settings.database_url``."""

    def __init__(self, settings: Settings, root: Path) -> None:
        url = settings.db_url
        if url.host not in ("127.0.0.1", "localhost", "::1", settings.bind_host):
            raise LabError(
                f"DBPATTERNS_DATABASE_URL points at {url.host}, which the embedded stack cannot "
                "start a server on",
                "use a local address (127.0.0.1), or run against that server without `up`",
            )
        self.settings = settings
        self.root = root
        self.data_dir = root / "data"
        self.socket_dir = root / "run"
        self.log_path = root.parent / "logs" / "postgres.log"
        self.host = settings.bind_host
        self.port = url.port or 5432
        self.user = url.username or "dbpatterns"
        self.password = url.password or ""
        self.database = url.database or "dbpatterns"
        self.process: ChildProcess | None = None
        self._bin: Path | None = None
        self._run_as: RunAs | None = None

    @property
    def bin_dir(self) -> Path:
        if self._bin is None:
            self._bin = find_pg_bin_dir(self.settings.pg_bin_dir)
        return self._bin

    @property
    def run_as(self) -> RunAs | None:
        if self._run_as is None:
            self._run_as = RunAs.postgres_if_root()
        return self._run_as

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def admin_url(self, database: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )

    def _own(self, *paths: Path) -> None:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            if self.run_as:
                self.run_as.chown(path)

    def init(self) -> bool:
        """Create the data directory unless it exists. True if it was created now."""
        if self.initialized:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            self.run_as.check_reachable(self.root)
        self._own(self.root, self.data_dir, self.socket_dir)
        with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False) as pwfile:
            pwfile.write(self.password + "\n")
        pw_path = Path(pwfile.name)
        try:
            if self.run_as:
                self.run_as.chown(pw_path)
            argv = [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                f"--pwfile={pw_path}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]  # fmt: skip
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=self.root,
                user=self.run_as.uid if self.run_as else None,
                group=self.run_as.gid if self.run_as else None,
                extra_groups=[] if self.run_as else None,
            )
        finally:
            pw_path.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LabError(
                f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}",
                "remove the folder (`./lab reset`) and try again",
            )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# dbpatterns: the lab's settings (copied from db/postgresql.conf)\n"
                f"include_if_exists = '{PG_INCLUDE_NAME}'\n"
            )
        return True

    def start(self, timeout: float = 30.0) -> ChildProcess:
        if not self.initialized:
            self.init()
        self._own(self.socket_dir)
        include = self.data_dir / PG_INCLUDE_NAME
        shutil.copyfile(PG_CONF, include)
        if self.run_as:
            self.run_as.chown(include)
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-k", str(self.socket_dir),
        ]  # fmt: skip
        self.process = spawn(
            "postgres",
            argv,
            self.log_path,
            cwd=self.root,
            run_as=self.run_as,
            death_signal=signal.SIGQUIT,
        )
        process = self.process
        if not wait_until(self.accepts_connections, timeout, alive=process.alive):
            process.stop(signal.SIGQUIT)
            raise LabError(
                f"PostgreSQL did not come up on {self.host}:{self.port}; its log says:\n"
                f"{tail(self.log_path)}",
                f"see {self.log_path}",
            )
        self.ensure_database()
        return process

    def accepts_connections(self) -> bool:
        return _pg_up(self.admin_url())

    def ensure_database(self) -> None:
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open transactions roll back, prepared ones survive on disk."""
        if self.process is not None:
            self.process.stop(signal.SIGINT, timeout=30)

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT, as ``pg_ctl -m immediate``): recovery runs on restart."""
        if self.process is not None:
            self.process.stop(signal.SIGQUIT, timeout=30)


# --- restate-server ----------------------------------------------------------------------------


def _npm_platform() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(
        platform.system(), platform.system().lower()
    )
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"{system}-{machine}"


def find_restate_binary(package: str, binary: str, configured: Path | None = None) -> Path:
    """A native binary shipped in the pinned npm packages (``package.json``)."""
    if configured is not None:
        if configured.is_file():
            return configured
        raise LabError(f"{configured} (configured) does not exist", "fix the path or unset it")
    path = (
        PROJECT_ROOT
        / "node_modules"
        / "@restatedev"
        / f"{package}-{_npm_platform()}"
        / "bin"
        / binary
    )
    if path.is_file():
        return path
    raise LabError(
        f"{binary} is not installed ({path} is missing)",
        "run `npm ci` in the project folder (`./lab up` and `./lab verify` do it for you)",
    )


class RestateServer:
    """restate-server with its data in ``<root>`` and the lab's tuning."""

    def __init__(self, settings: Settings, root: Path, *, extra_config: str = "") -> None:
        self.settings = settings
        self.root = root
        self.config_path = root / "restate.toml"
        self.log_path = root.parent / "logs" / "restate.log"
        self.extra_config = extra_config
        self.process: ChildProcess | None = None
        self.identity_key_file: Path | None = None

    def config_toml(self) -> str:
        s = self.settings
        t = RestateTuning
        return (
            "# Written by dbpatterns on every start; edit dbpatterns/config.py instead.\n"
            f'base-dir = "{self.root / "data"}"\n'
            f'bind-address = "{s.bind_host}:{s.restate_node_port}"\n'
            f'advertised-address = "http://{s.bind_host}:{s.restate_node_port}/"\n'
            "disable-telemetry = true\n"
            "log-disable-ansi-codes = true\n\n"
            "[default-retry-policy]\n"
            f'initial-interval = "{t.RETRY_INITIAL_INTERVAL}"\n'
            f"exponentiation-factor = {t.RETRY_EXPONENTIATION_FACTOR}\n"
            f'max-interval = "{t.RETRY_MAX_INTERVAL}"\n'
            f'on-max-attempts = "{t.RETRY_ON_MAX_ATTEMPTS}"\n\n'
            "[worker.invoker]\n"
            f'inactivity-timeout = "{t.INACTIVITY_TIMEOUT}"\n'
            f'abort-timeout = "{t.ABORT_TIMEOUT}"\n'
            + (
                f'request-identity-private-key-pem-file = "{self.identity_key_file}"\n'
                if self.identity_key_file
                else ""
            )
            + "\n"
            "[ingress]\n"
            f'bind-address = "{s.bind_host}:{s.ingress_port}"\n\n'
            "[admin]\n"
            f'bind-address = "{s.bind_host}:{s.admin_port}"\n' + self.extra_config
        )

    def start(self, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> ChildProcess:
        binary = find_restate_binary("restate-server", "restate-server", self.settings.restate_bin)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.settings.request_identity:
            self.identity_key_file, _ = identity.ensure_key_pair(self.settings.identity_dir)
        self.config_path.write_text(self.config_toml())
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        child_env.update(env or {})
        self.process = spawn(
            "restate-server",
            [str(binary), "--config-file", str(self.config_path)],
            self.log_path,
            env=child_env,
            cwd=self.root,
        )
        process = self.process
        if not wait_until(self.healthy, timeout, alive=process.alive):
            process.stop()
            raise LabError(
                "restate-server did not become healthy; its log says:\n" + tail(self.log_path),
                f"see {self.log_path}",
            )
        return process

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.admin_url}/health") and http_ok(
            f"{self.settings.ingress_url}/restate/health"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=20)


def register_deployment(admin_url: str, service_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Register (or re-register, after a code change) the service with restate-server."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{admin_url}/deployments", json={"uri": service_url, "force": True}, timeout=10
            )
        except httpx.HTTPError as exc:
            last_error = str(exc)
        else:
            if response.status_code in (200, 201):
                result: dict[str, Any] = response.json()
                return result
            last_error = f"HTTP {response.status_code}: {response.text}"
        time.sleep(0.3)
    raise LabError(
        f"registering {service_url} with {admin_url} failed: {last_error}",
        "check the service log (.lab/logs/service.log) and `./lab status`",
    )


# --- the service -------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``DBPATTERNS_*`` variables, for a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"DBPATTERNS_{name.upper()}"] = str(value)
    return env


class ServiceProcess:
    """The Restate service under hypercorn: one process, HTTP/2 cleartext (h2c)."""

    def __init__(
        self, settings: Settings, log_path: Path, *, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.process: ChildProcess | None = None

    def argv(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "hypercorn", "dbpatterns.app:app",
            "--bind", f"{s.bind_host}:{s.service_port}",
            "--workers", "0",
            "--config", "python:dbpatterns.hypercorn_config",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ChildProcess:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        if self.settings.request_identity and not self.settings.identity_public_key:
            _, public_key = identity.ensure_key_pair(self.settings.identity_dir)
            env["DBPATTERNS_IDENTITY_PUBLIC_KEY"] = public_key
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Killed outright if the lab process dies without stopping it (terminal closed, kill -9):
        # the SDK takes SIGTERM over once it serves, so a gentler signal would leave it serving.
        self.process = spawn(
            "service",
            self.argv(),
            self.log_path,
            env=env,
            cwd=PROJECT_ROOT,
            death_signal=signal.SIGKILL,
        )
        process = self.process
        if not wait_until(self.healthy, timeout, alive=process.alive):
            process.stop(signal.SIGINT)
            raise LabError(
                "the service did not come up; its log says:\n" + tail(self.log_path),
                f"see {self.log_path}",
            )
        return process

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.service_url}/health")

    def stop(self) -> None:
        # The SDK takes SIGTERM over once it serves; SIGINT is hypercorn's own clean stop.
        if self.process is not None:
            self.process.stop(signal.SIGINT, timeout=15)

    def restart(self, timeout: float = 30.0) -> ChildProcess:
        self.stop()
        return self.start(timeout)


# --- the whole stack ---------------------------------------------------------------------------


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
        "postgres": lambda: _pg_up(settings.libpq_url),
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


def _pg_up(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
