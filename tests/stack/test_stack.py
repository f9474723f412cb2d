"""The embedded stack itself: schema, registration, `dbpatterns up` and its shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypercorn.config import Config as HypercornConfig
from sqlalchemy import create_engine

from dbpatterns.config import Settings
from dbpatterns.service import migrate
from dbpatterns.service.schema import metadata
from dbpatterns.service.serve import hypercorn_argv
from dbpatterns.stack import LabError, Stack, find_pg_bin_dir, free_port, pid_alive, procfs
from dbpatterns.stack.client import Admin, Ingress


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_migrations_upgrade_downgrade_and_upgrade_again_cleanly(scratch_database: str) -> None:
    migrate.upgrade(scratch_database)
    assert tables(scratch_database) == set(metadata.tables) | {"alembic_version"}
    migrate.downgrade(scratch_database)
    assert tables(scratch_database) == {"alembic_version"}
    migrate.migrate(scratch_database)
    with psycopg.connect(scratch_database) as conn:
        seeded = conn.execute("SELECT userid, credits FROM users ORDER BY userid").fetchall()
    assert seeded == [("A", 1000), ("B", 1000)]


def test_migrated_schema_matches_the_tables_the_handlers_query(scratch_database: str) -> None:
    migrate.upgrade(scratch_database)
    engine = create_engine(scratch_database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_seeding_twice_keeps_existing_balances(scratch_database: str) -> None:
    migrate.migrate(scratch_database)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("UPDATE users SET credits = 7 WHERE userid = 'A'")
    migrate.seed(scratch_database)
    with psycopg.connect(scratch_database) as conn:
        row = conn.execute("SELECT credits FROM users WHERE userid = 'A'").fetchone()
    assert row == (7,)


def test_service_is_registered_as_a_bidi_http2_deployment(
    admin: Admin, ingress: Ingress, settings: Settings
) -> None:
    ours = [d for d in admin.deployments() if d["uri"].rstrip("/") == settings.service_url]
    assert len(ours) == 1
    assert ours[0]["protocol_type"] == "BidiStream"
    assert ours[0]["http_version"] == "HTTP/2.0"
    names = {s["name"] for s in ours[0]["services"]}
    assert names == {
        "simple",
        "keyed",
        "idempotency",
        "twoPhaseCommit",
        "baseline",
        "invoices",
        "invoice",
        "shapes",
        "shapesBrief",
        "shapesAccount",
    }


def test_a_request_through_the_ingress_reaches_the_service_and_returns(ingress: Ingress) -> None:
    response = ingress.call("simple", "read", "A")
    assert response.status_code == 200, response.text
    assert response.json()["userId"] == "A"


# --- errors a user can act on ------------------------------------------------------------------


def test_a_busy_port_is_reported_with_the_setting_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(Settings(home=tmp_path, ingress_port=port, admin_port=free_port()))
        with pytest.raises(LabError) as err:
            stack.preflight()
    assert f"restate ingress 127.0.0.1:{port}" in err.value.problem
    assert "DBPATTERNS_INGRESS_PORT" in err.value.hint


def test_missing_restate_binary_says_to_run_npm_ci(tmp_path: Path) -> None:
    stack = Stack(Settings(home=tmp_path, restate_bin=tmp_path / "nope"))
    with pytest.raises(LabError, match="does not exist"):
        stack.preflight()


def test_a_pg_bin_dir_without_the_server_binaries_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LabError) as err:
        find_pg_bin_dir(tmp_path)
    assert "DBPATTERNS_PG_BIN_DIR" in err.value.problem


# --- `dbpatterns up` as a user runs it ---------------------------------------------------------


def restore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class LabProcess:
    """`dbpatterns up` in a subprocess, on free ports, in a working folder of its own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "DBPATTERNS_HOME": str(home),
            "DBPATTERNS_DATABASE_URL": Settings().database_url_at("127.0.0.1", free_port()),
            "DBPATTERNS_INGRESS_PORT": str(free_port()),
            "DBPATTERNS_ADMIN_PORT": str(free_port()),
            "DBPATTERNS_RESTATE_NODE_PORT": str(free_port()),
            "DBPATTERNS_SERVICE_PORT": str(free_port()),
        }
        self.log = home / "up.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dbpatterns.cli", *args],
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def up(self, timeout: float = 60) -> dict[str, Any]:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dbpatterns.cli", "up"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # `up` as from a terminal: SIGHUP at its default even when the tests run under
                # nohup (which would leave it ignored in every child, and `up` alive after it).
                preexec_fn=restore_sighup,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            status = self.cli("status", "--json")
            if status.returncode == 0:
                state: dict[str, Any] = json.loads(status.stdout)
                return state
            time.sleep(0.5)
        raise AssertionError("lab did not come up:\n" + self.log.read_text())

    def interrupt(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


def processes_mentioning(text: str) -> list[int]:
    return [pid for pid in procfs.pids() if text in procfs.cmdline(pid) and pid_alive(pid)]


@pytest.fixture
def lab() -> Iterator[LabProcess]:
    home = Path(tempfile.mkdtemp(prefix="dbpatterns-up-"))
    home.chmod(0o755)
    lab = LabProcess(home)
    yield lab
    if lab.proc is not None and lab.proc.poll() is None:
        lab.interrupt()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=lambda s: s.name)
def test_nothing_outlives_an_up_that_dies_without_cleaning_up_and_the_next_up_works(
    lab: LabProcess, sig: signal.Signals
) -> None:
    """The terminal closed (SIGHUP) or ``up`` killed (SIGKILL): no part may keep running (the
    service used to, ignoring the SIGTERM it got, because the SDK takes SIGTERM over), and the
    next ``up`` starts without a word from the user."""
    state = lab.up()
    pids = {name: part["pid"] for name, part in state["parts"].items()}
    assert all(pid_alive(pid) for pid in pids.values())
    assert lab.proc is not None
    lab.proc.send_signal(sig)
    assert lab.proc.wait(30) != 0
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {name: pid for name, pid in pids.items() if pid_alive(pid)} == {}
    assert processes_mentioning(str(lab.home)) == []

    state = lab.up()
    with Ingress(state["ingress_url"]) as ingress:
        assert ingress.call("simple", "read", "B").status_code == 200
    assert lab.interrupt() == 0


@pytest.mark.slow
def test_up_twice_reuses_data_and_ctrl_c_leaves_no_process_behind(lab: LabProcess) -> None:
    state = lab.up()
    pids = [part["pid"] for part in state["parts"].values()]
    assert all(pid_alive(pid) for pid in pids)
    with Ingress(state["ingress_url"]) as ingress:
        assert ingress.call("simple", "read", "B").status_code == 200
    with psycopg.connect(state["database_url"], autocommit=True) as conn:
        conn.execute("UPDATE users SET credits = 4242 WHERE userid = 'B'")

    assert lab.interrupt() == 0
    assert not [pid for pid in pids if pid_alive(pid)]
    assert processes_mentioning(str(lab.home)) == []
    assert lab.cli("status").returncode == 1

    state = lab.up()
    assert "reusing" in lab.log.read_text()
    with psycopg.connect(state["database_url"]) as conn:
        row = conn.execute("SELECT credits FROM users WHERE userid = 'B'").fetchone()
    assert row == (4242,)
    second_pids = [part["pid"] for part in state["parts"].values()]
    assert lab.interrupt() == 0
    assert not [pid for pid in second_pids if pid_alive(pid)]

    refused = lab.cli("reset")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert lab.cli("reset", "--yes").returncode == 0
    assert not (lab.home / "postgres").exists()


def test_the_service_keeps_restates_connection_open_past_a_thousand_calls() -> None:
    """hypercorn closes an HTTP/2 connection after 1,000 requests by default: every stream in
    flight breaks and Restate retries it (measured: keyed.update on a hot key then duplicated,
    p99 10 s). When hypercorn serves, it must run with that limit lifted."""
    argv = hypercorn_argv(Settings.model_construct())
    module = argv[argv.index("--config") + 1].removeprefix("python:")
    config = HypercornConfig.from_object(module)
    assert config.keep_alive_max_requests >= 2**40
