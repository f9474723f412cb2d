"""The shell steps under the README's example ("Run it beside the lab") do what they say: their
SQL builds the example's tables in a database of its own, and the service gets a port that no
part of the lab listens on. (The example's code and its curl lines: test_readme_example.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbpatterns.config import CLUSTER_PORT_OFFSETS, PROJECT_ROOT, Settings
from tests.exactly_once.test_readme_example import readme_steps


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database of its own on the session's server, as the steps make one; dropped after."""
    name = f"orders_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_steps_sql_builds_the_stock_and_token_tables_in_an_empty_database(
    empty_database: str,
) -> None:
    assert shutil.which("psql"), "psql is needed to run the README's steps"
    building = [line for line in readme_steps().splitlines() if 'psql "$DATABASE_URL"' in line]
    assert len(building) == 3, building  # stock, its row, the token table
    for line in building:
        ran = subprocess.run(
            ["bash", "-c", line],
            cwd=PROJECT_ROOT,  # the steps run in the checkout (.venv/bin/python)
            env={**os.environ, "DATABASE_URL": empty_database},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, f"{line}\n{ran.stderr}"
        assert "ERROR" not in ran.stderr, f"{line}\n{ran.stderr}"  # psql reading a pipe goes on
    with psycopg.connect(empty_database) as conn:
        stock: list[tuple[Any, ...]] = conn.execute("SELECT sku, available FROM stock").fetchall()
        assert stock == [("apple", 10)]
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert {"stock", "exactly_once_tokens"} <= {t[0] for t in tables}


def test_the_steps_serve_and_register_the_example_on_a_port_the_lab_does_not_use() -> None:
    steps = readme_steps()
    (port,) = {int(p) for p in re.findall(r"--bind 127\.0\.0\.1:(\d+)", steps)}
    assert f"deployments register http://127.0.0.1:{port} " in steps
    lab = Settings()
    used = {lab.service_port, lab.ingress_port, lab.admin_port, lab.restate_node_port}
    used |= {lab.db_url.port or 5432}
    for node in range(1, 4):  # ./lab up --nodes 3
        used |= {lab.restate_cluster_port_base + 1000 * node + o for o in CLUSTER_PORT_OFFSETS}
    assert port not in used, f"{port} is a port of the lab's own ({sorted(used)})"
