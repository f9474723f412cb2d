"""A real PostgreSQL for a test session, and what it saw: every statement it received, logged
by Postgres itself with the time and the sending process's application name.

Locally (no Docker): the server binaries on this machine (``initdb``, ``postgres``: from
``DBPATTERNS_PG_BIN_DIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` or PATH), a
fresh data directory in a temporary folder (as the ``postgres`` OS user when the tests run as
root, since ``initdb`` refuses root), on a free loopback port. With a Docker engine: the
``postgres`` image through testcontainers. Both run with prepared transactions enabled, no
fsync (a test database: durability across a power cut is not what is tested) and
``log_statement = all`` into a CSV log, which ``statements`` reads: the proof that a zombie's SQL
reached the database after it resumed comes from Postgres, not from the process itself.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from dbpatterns.testing.processes import Child, KitError, free_port, spawn, tail, wait_until

DATABASE = "app"
IMAGE = "postgres:15"
#: Server settings of the test database (``-c`` options), for both ways of starting it.
SETTINGS = {
    "max_prepared_transactions": "64",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "on",
    "log_destination": "csvlog",
    "log_directory": "log",
    "log_filename": "postgresql",
    "log_rotation_size": "0",
    "log_statement": "all",
    "log_timezone": "UTC",
}
CSV_LOG = "log/postgresql.csv"
#: Columns of ``csvlog`` (PostgreSQL 13 and newer start with these, in this order).
LOG_TIME, PROCESS_ID, SEVERITY, SQLSTATE, MESSAGE, APPLICATION_NAME = 0, 3, 11, 12, 13, 22


@dataclass(frozen=True)
class Statement:
    """One line of Postgres's log: a statement it received, or an error it raised."""

    at: float  # seconds since the epoch, as ``time.time()``
    backend_pid: int
    application_name: str
    severity: str  # LOG for a statement received; ERROR or FATAL for a refusal
    sqlstate: str
    message: str


class Postgres(Protocol):
    """A running test database: where it is, and what it received."""

    url: str

    def statements(self, application_name: str) -> list[Statement]: ...

    def stop(self) -> None: ...


def parse_log(text: str) -> list[Statement]:
    """The lines of a ``csvlog`` file (a line cut off by a concurrent write is left out)."""
    found = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) <= APPLICATION_NAME:
            continue
        # "2026-12-07 23:10:01.123 UTC": the log's time zone is UTC (``SETTINGS``).
        stamp = datetime.fromisoformat(row[LOG_TIME].removesuffix(" UTC"))
        at = stamp.replace(tzinfo=UTC).timestamp()
        found.append(
            Statement(
                at,
                int(row[PROCESS_ID] or 0),
                row[APPLICATION_NAME],
                row[SEVERITY],
                row[SQLSTATE],
                row[MESSAGE],
            )
        )
    return found


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``postgres``."""
    configured = os.environ.get("DBPATTERNS_PG_BIN_DIR")
    candidates = [Path(configured)] if configured else []
    if not configured:
        pg_config = shutil.which("pg_config")
        if pg_config:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
                candidates.append(Path(out.stdout.strip()))
        candidates += sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        initdb = shutil.which("initdb")
        if initdb:
            candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise KitError(
        "no PostgreSQL server binaries found (`initdb` and `postgres`"
        + (f" in DBPATTERNS_PG_BIN_DIR={configured})" if configured else " on this machine)"),
        "install the server (Debian/Ubuntu: `apt-get install postgresql`), set "
        "DBPATTERNS_PG_BIN_DIR to its bin folder, or run with a Docker engine",
    )


class LocalPostgres:
    """A PostgreSQL server of the test session's own, in a temporary folder."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="dbpatterns-kit-pg-"))
        self.port = free_port()
        self.url = psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user="postgres", dbname=DATABASE
        )
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise KitError(
                    "the tests run as root and there is no `postgres` OS user to run the "
                    "server as (initdb refuses root)",
                    "install the PostgreSQL server package (it creates the user), or run the "
                    "tests as an unprivileged user",
                ) from None
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
            os.chmod(self.root, 0o755)
        self.process: Child | None = None

    def _as_owner(self) -> dict[str, Any]:
        if self._owner is None:
            return {}
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid}

    def start(self) -> None:
        data = self.root / "data"
        argv = [str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        argv += ["--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        initdb = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.root,
            **self._as_owner(),
        )
        if initdb.returncode != 0:
            raise KitError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        options = [f"-c{name}={value}" for name, value in SETTINGS.items()]
        argv = [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port)]
        argv += ["-clisten_addresses=127.0.0.1", f"-cunix_socket_directories={self.root}"]
        owner = self._as_owner()
        self.process = spawn(
            "postgres",
            argv + options,
            self.root / "server.log",
            cwd=self.root,
            user=owner.get("user"),
            group=owner.get("group"),
            death_signal=signal.SIGQUIT,
        )
        admin = self.url.replace(f"dbname={DATABASE}", "dbname=postgres")
        if not wait_until(lambda: _accepts(admin), 30):
            self.stop()
            log = tail(self.root / "server.log") + tail(data / "log" / "postgresql")
            raise KitError(f"PostgreSQL did not come up on port {self.port}:\n{log}")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def statements(self, application_name: str) -> list[Statement]:
        try:
            text = (self.root / "data" / CSV_LOG).read_text(errors="replace")
        except OSError:
            return []
        return [s for s in parse_log(text) if s.application_name == application_name]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGINT, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


class DockerPostgres:
    """The ``postgres`` image through testcontainers (for machines with a Docker engine)."""

    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        options = " ".join(f"-c {name}={value}" for name, value in SETTINGS.items())
        self.container = PostgresContainer(
            IMAGE, username="postgres", password="postgres", dbname=DATABASE
        ).with_command(f"postgres {options}")
        self.url = ""

    def start(self) -> None:
        self.container.start()
        self.url = psycopg.conninfo.make_conninfo(
            host=self.container.get_container_host_ip(),
            port=int(self.container.get_exposed_port(5432)),
            user="postgres",
            password="postgres",
            dbname=DATABASE,
        )

    def statements(self, application_name: str) -> list[Statement]:
        log_file = f"/var/lib/postgresql/data/{CSV_LOG}"
        exit_code, output = self.container.exec(["cat", log_file])
        if exit_code != 0:
            return []
        text = output.decode(errors="replace")
        return [s for s in parse_log(text) if s.application_name == application_name]

    def stop(self) -> None:
        self.container.stop()


def _accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
