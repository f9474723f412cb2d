"""PostgreSQL as a child process: a data directory initialised on the first run (as the
``postgres`` OS user when run as root, since ``initdb`` refuses root) or reused, started with
``db/postgresql.conf`` included, and the lab's database and role created."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from dbpatterns.config import PROJECT_ROOT, Settings
from dbpatterns.stack.processes import (
    ChildProcess,
    LabError,
    RunAs,
    spawn,
    tail,
    wait_until,
)

PG_CONF = PROJECT_ROOT / "db" / "postgresql.conf"
PG_INCLUDE_NAME = "dbpatterns.conf"


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
        return pg_up(self.admin_url())

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


def pg_up(url: str) -> bool:
    """Does a Postgres server accept a connection at ``url``?"""
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
