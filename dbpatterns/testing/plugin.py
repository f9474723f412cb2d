"""The pytest plugin of the test kit (entry point ``pytest11``: ``dbpatterns``).

Nothing starts unless a test asks for a fixture: installing the kit adds fixtures, no hooks.

Say which app to serve and what the database needs, in your ``conftest.py`` (or the app in
your pytest configuration as ``dbpatterns_app = "orders_app:app"``)::

    @pytest.fixture(scope="session")
    def kit_app() -> str:
        return "orders_app:app"          # importable from pytest's root folder

    @pytest.fixture(scope="session")
    def kit_schema() -> str:
        return schema.ddl() + "CREATE TABLE stock (...);"

Fixtures:

* ``kit_service``: the app served and registered (``dbpatterns.testing.ServedApp``): calls
  with idempotency keys, faults at the library's points, cancel and kill; each test's armed
  faults and zombies end with the test.
* ``kit_db``: a connection (autocommit) to the test database; ``kit_postgres`` and
  ``kit_restate``: the servers, one per session.
* ``kit_env``: more environment for the service's processes (they get ``DATABASE_URL``).

Where Postgres and restate-server come from: ``--kit-backend`` (or ``DBPATTERNS_KIT_BACKEND``):
``auto`` (the default: containers through testcontainers when a Docker engine answers, local
processes otherwise), ``local`` or ``docker``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbpatterns.testing.postgres import DockerPostgres, LocalPostgres, Postgres
from dbpatterns.testing.restate import DockerRestate, LocalRestate, Restate
from dbpatterns.testing.service import ServedApp


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbpatterns", "the dbpatterns test kit")
    group.addoption(
        "--kit-backend",
        default=os.environ.get("DBPATTERNS_KIT_BACKEND", "auto"),
        choices=["auto", "local", "docker"],
        help="where the kit's Postgres and restate-server come from (default: auto)",
    )
    parser.addini("dbpatterns_app", "the ASGI app the kit serves, as module:attribute")


def docker_answers() -> bool:
    """Is testcontainers installed and a Docker engine answering?"""
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kit_backend(pytestconfig: pytest.Config) -> str:
    chosen = str(pytestconfig.getoption("--kit-backend"))
    if chosen == "auto":
        return "docker" if docker_answers() else "local"
    return chosen


@pytest.fixture(scope="session")
def kit_app(pytestconfig: pytest.Config) -> str:
    """The app to serve (``module:attribute``); override this fixture or set the ini option."""
    spec = str(pytestconfig.getini("dbpatterns_app") or "")
    if not spec:
        raise pytest.UsageError(
            "the dbpatterns kit does not know which app to serve: define a session fixture "
            "`kit_app` returning 'module:app', or set `dbpatterns_app` in your pytest config"
        )
    return spec


@pytest.fixture(scope="session")
def kit_schema() -> str:
    """SQL run once on the fresh test database before the service starts (override it)."""
    return ""


@pytest.fixture(scope="session")
def kit_env() -> dict[str, str]:
    """More environment for the service's processes (override it)."""
    return {}


@pytest.fixture(scope="session")
def kit_postgres(kit_backend: str) -> Iterator[Postgres]:
    server = DockerPostgres() if kit_backend == "docker" else LocalPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kit_restate(kit_backend: str) -> Iterator[Restate]:
    server = DockerRestate() if kit_backend == "docker" else LocalRestate()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kit_served(
    pytestconfig: pytest.Config,
    kit_app: str,
    kit_schema: str,
    kit_env: dict[str, str],
    kit_postgres: Postgres,
    kit_restate: Restate,
) -> Iterator[ServedApp]:
    if kit_schema.strip():
        with psycopg.connect(kit_postgres.url, autocommit=True) as conn:
            conn.execute(kit_schema.encode())
    workdir = Path(tempfile.mkdtemp(prefix="dbpatterns-kit-service-"))
    served = ServedApp(
        kit_app,
        workdir,
        pytestconfig.rootpath,
        {"DATABASE_URL": kit_postgres.url, **kit_env},
        kit_postgres,
        kit_restate,
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def kit_service(kit_served: ServedApp) -> Iterator[ServedApp]:
    """The served app; the faults a test armed and the zombies it made end with it."""
    kit_served.begin_test()
    yield kit_served
    kit_served.disarm()
    for zombie in kit_served.zombies:
        zombie.end()
    kit_served.zombies.clear()


@pytest.fixture
def kit_db(kit_postgres: Postgres) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(kit_postgres.url, autocommit=True) as conn:
        yield conn
