"""Session fixtures: a real PostgreSQL, a real restate-server and the service as a subprocess.

The parts are started once per session, on free ports and in a temporary folder of their own (so
the tests can run while ``dbpatterns up`` is running), by the same code that ``up`` uses
(``dbpatterns.stack``). Tests share the infrastructure but never state: each takes fresh keys.

Where the parts come from is chosen by ``--backend`` (or ``DBPATTERNS_TEST_BACKEND``):

* ``auto`` (default): containers (testcontainers) when a Docker engine answers, local processes
  otherwise;
* ``local``: PostgreSQL and restate-server binaries on this machine;
* ``docker``: ``postgres:15`` and ``restatedev/restate`` containers;
* ``external``: servers you run, given by ``DBPATTERNS_TEST_DATABASE_URL``,
  ``DBPATTERNS_TEST_INGRESS_URL`` and ``DBPATTERNS_TEST_ADMIN_URL``.

The service itself always runs as a local subprocess: it is the thing the chaos suite kills.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbpatterns.config import RestateTuning, Settings
from dbpatterns.service import failpoints, identity, migrate
from dbpatterns.stack import (
    PostgresServer,
    RestateServer,
    ServiceProcess,
    free_port,
    register_deployment,
)
from dbpatterns.stack.client import Admin, Ingress
from dbpatterns.testing.plugin import docker_answers

POSTGRES_IMAGE = "postgres:15"
RESTATE_IMAGE = "docker.io/restatedev/restate:1.7.12"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default=os.environ.get("DBPATTERNS_TEST_BACKEND", "auto"),
        choices=["auto", "local", "docker", "external"],
        help="where Postgres and restate-server come from (see tests/conftest.py)",
    )


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    choice: str = request.config.getoption("--backend")
    if choice == "auto":
        return "docker" if docker_answers() else "local"
    return choice


@pytest.fixture(scope="session")
def lab_home() -> Iterator[Path]:
    """A working folder the ``postgres`` OS user can reach (pytest's own tmp is private)."""
    home = Path(tempfile.mkdtemp(prefix="dbpatterns-test-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def base_settings(lab_home: Path) -> Settings:
    """Settings of the test stack: free ports, its own folder. The database URL is filled in
    by the ``database_url`` fixture."""
    return Settings(
        home=lab_home,
        database_url=Settings().database_url_at("127.0.0.1", free_port()),
        ingress_port=free_port(),
        admin_port=free_port(),
        restate_node_port=free_port(),
        service_port=free_port(),
        # A call's deadline, and half a token's life: short enough for the expiry tests to wait
        # out, long enough for a call slowed by a loaded machine to commit within it.
        idempotency_token_ttl=timedelta(seconds=10),
    )


@dataclass
class DatabaseEndpoint:
    url: str  # libpq form
    server: PostgresServer | None  # the local process, when there is one


@pytest.fixture(scope="session")
def postgres(backend: str, base_settings: Settings) -> Iterator[DatabaseEndpoint]:
    """A migrated, seeded lab database."""
    if backend == "external":
        url = _required_env("DBPATTERNS_TEST_DATABASE_URL")
        migrate.migrate(url)
        yield DatabaseEndpoint(url, None)
    elif backend == "docker":
        from testcontainers.postgres import PostgresContainer

        wanted = base_settings.db_url
        container = PostgresContainer(
            POSTGRES_IMAGE,
            username=wanted.username,
            password=wanted.password,
            dbname=wanted.database,
        ).with_command(
            "postgres -c max_prepared_transactions=100 -c max_connections=200"
            " -c shared_preload_libraries=pg_stat_statements"
        )
        with container:
            host = container.get_container_host_ip()
            port = int(container.get_exposed_port(5432))
            url = base_settings.database_url_at(host, port)
            migrate.migrate(url)
            yield DatabaseEndpoint(url, None)
    else:
        server = PostgresServer(base_settings, base_settings.home / "postgres")
        server.start()
        try:
            migrate.migrate(base_settings.libpq_url)
            yield DatabaseEndpoint(base_settings.libpq_url, server)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: DatabaseEndpoint) -> str:
    return postgres.url


@pytest.fixture(scope="session")
def settings(base_settings: Settings, database_url: str) -> Settings:
    return base_settings.model_copy(update={"database_url": database_url})


@dataclass
class RestateEndpoints:
    ingress_url: str
    admin_url: str
    server: RestateServer | None  # the local process, when there is one


@pytest.fixture(scope="session")
def restate_server(backend: str, settings: Settings) -> Iterator[RestateEndpoints]:
    if backend == "external":
        yield RestateEndpoints(
            _required_env("DBPATTERNS_TEST_INGRESS_URL"),
            _required_env("DBPATTERNS_TEST_ADMIN_URL"),
            None,
        )
    elif backend == "docker":
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        # Host networking: the container reaches the service on this machine's loopback.
        key_file, _ = identity.ensure_key_pair(settings.identity_dir)
        container = (
            DockerContainer(RESTATE_IMAGE)
            .with_kwargs(network_mode="host")
            .with_volume_mapping(str(key_file), "/identity/key.pem", "ro")
        )
        env = {
            "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE": "/identity/key.pem",
            **RestateTuning.as_env(),
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{settings.ingress_port}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{settings.admin_port}",
            "RESTATE_BIND_ADDRESS": f"127.0.0.1:{settings.restate_node_port}",
            "RESTATE_DISABLE_TELEMETRY": "true",
        }
        for name, value in env.items():
            container = container.with_env(name, value)
        with container:
            wait_for_logs(container, "Ingress HTTP listening", timeout=60)
            yield RestateEndpoints(settings.ingress_url, settings.admin_url, None)
    else:
        server = RestateServer(settings, settings.home / "restate")
        server.start()
        try:
            yield RestateEndpoints(settings.ingress_url, settings.admin_url, server)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def failpoints_file(lab_home: Path) -> Path:
    """The service's failpoint control file; while it is missing, every failpoint is off."""
    return lab_home / "failpoints"


@pytest.fixture(scope="session")
def service(
    settings: Settings, restate_server: RestateEndpoints, failpoints_file: Path
) -> Iterator[ServiceProcess]:
    """The service as its own process, registered with restate-server."""
    svc = ServiceProcess(
        settings,
        settings.home / "logs" / "service.log",
        extra_env={failpoints.ENV_FILE: str(failpoints_file)},
    )
    svc.start()
    try:
        register_deployment(restate_server.admin_url, settings.service_url)
        yield svc
    finally:
        svc.stop()


@dataclass
class SideStack:
    """A restate-server and a service process of their own, beside the session's."""

    settings: Settings
    restate: RestateServer
    service: ServiceProcess
    ingress: Ingress
    admin: Admin


@contextmanager
def side_stack(
    settings: Settings,
    root: Path,
    *,
    restate_env: Mapping[str, str] | None = None,
    **updates: Any,
) -> Iterator[SideStack]:
    """A second restate-server (always a local process, the npm binary, whatever the session's
    backend) and a second service registered to it, on fresh ports, with ``updates`` applied to
    ``settings``; data and logs under ``root``. A service must not be registered with the
    session's restate-server instead: the newest deployment would take the session tests' calls.
    """
    side = settings.model_copy(
        update={
            "ingress_port": free_port(),
            "admin_port": free_port(),
            "restate_node_port": free_port(),
            "service_port": free_port(),
            **updates,
        }
    )
    restate = RestateServer(side, root / "restate")
    restate.start(env=restate_env)
    svc = ServiceProcess(side, root / "logs" / "service.log")
    try:
        svc.start()
        register_deployment(side.admin_url, side.service_url)
        with Ingress(side.ingress_url) as ingress:
            admin = Admin(side.admin_url)
            try:
                yield SideStack(side, restate, svc, ingress, admin)
            finally:
                admin.close()
    finally:
        svc.stop()
        restate.stop()


@contextmanager
def database_of_its_own(database_url: str, prefix: str) -> Iterator[str]:
    """A fresh database on the session's server, dropped afterwards: its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = psycopg.conninfo.conninfo_to_dict(database_url)
    url = f"postgresql://{base['user']}:{base['password']}@{base['host']}:{base['port']}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def ingress(service: ServiceProcess, restate_server: RestateEndpoints) -> Iterator[Ingress]:
    with Ingress(restate_server.ingress_url) as client:
        yield client


@pytest.fixture(scope="session")
def admin(restate_server: RestateEndpoints) -> Iterator[Admin]:
    client = Admin(restate_server.admin_url)
    yield client
    client.close()


@pytest.fixture
def failpoint(
    service: ServiceProcess, failpoints_file: Path
) -> Iterator[Callable[[str, str], None]]:
    """Switches failpoints of the running service on for one test: ``failpoint("name",
    "1*error")``. All are off again after the test."""
    import dbpatterns.patterns  # noqa: F401  (declares every failpoint, so names are checked)

    switched: dict[str, str] = {}

    def switch(name: str, action: str) -> None:
        switched[name] = action
        spec = "".join(f"{n}={a}\n" for n, a in switched.items())
        failpoints.parse_spec(spec)  # a typo fails here, not silently in the service
        tmp = failpoints_file.with_suffix(".tmp")
        tmp.write_text(spec)
        tmp.replace(failpoints_file)

    yield switch
    failpoints_file.unlink(missing_ok=True)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the lab database, to look at (and set up) rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def users_checksum(db: psycopg.Connection[Any]) -> Callable[[], str]:
    """A digest of the whole users table: equal before and after means nothing changed."""

    def digest() -> str:
        row = db.execute(
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY userid), '')) FROM users t"
        ).fetchone()
        assert row is not None
        return str(row[0])

    return digest


@pytest.fixture
def new_user(db: psycopg.Connection[Any]) -> Callable[..., str]:
    """Creates a user of its own for one test: ``new_user(credits=100)`` -> user id."""

    def make(credits: int = 1000, name: str = "Test User") -> str:
        user_id = f"u-{uuid.uuid4().hex[:12]}"
        db.execute(
            "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, %s)",
            (user_id, name, "1 Test Street", credits),
        )
        return user_id

    return make


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(f"--backend=external needs {name}")
    return value


@pytest.fixture
def scratch_database(database_url: str) -> Iterator[str]:
    """An empty database of its own on the session's server."""
    with database_of_its_own(database_url, "scratch") as url:
        yield url
