"""Either ASGI server keeps the service's guarantees (``DBPATTERNS_SERVICE_SERVER``).

Each server gets a stack of its own: a restate-server, and the service on a fresh database of
the session's Postgres (so its janitor may run). On each: restate-server registers the service
as a BidiStream HTTP/2 deployment; one call per pattern succeeds and changes the balance once;
SIGINT stops the process within seconds, after the app's lifespan shutdown; and the faults the
chaos suite injects leave it serving: SIGKILL then a restart, SIGSTOP then SIGCONT. Every test
first proves which server answers (the ``server`` header, the process's command line) and that
it is the one process the lab started, with no child behind it.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dbpatterns.config import Settings
from dbpatterns.service import migrate
from dbpatterns.stack import ChildProcess, pid_alive, pid_stopped, procfs, wait_until
from dbpatterns.stack.client import Ingress
from tests.conftest import SideStack, database_of_its_own, side_stack

SERVERS = ["hypercorn", "granian"]

#: What each server names itself in the ``server`` header, and a word of its command line.
SERVER_HEADER = {"hypercorn": "hypercorn-", "granian": "granian"}
COMMAND_LINE = {"hypercorn": "hypercorn", "granian": "dbpatterns.service.serve"}

#: "Within a few seconds": hypercorn's graceful timeout is 3 s.
STOPS_WITHIN_S = 5.0


@dataclass
class ServerStack:
    server: str
    stack: SideStack
    database_url: str

    @property
    def process(self) -> ChildProcess:
        process = self.stack.service.process
        assert process is not None, "the service was never started"
        return process


@pytest.fixture(scope="module", params=SERVERS)
def server_stack(
    request: pytest.FixtureRequest, settings: Settings, database_url: str
) -> Iterator[ServerStack]:
    server: str = request.param
    with database_of_its_own(database_url, f"server_{server}") as url:
        migrate.migrate(url)
        with side_stack(
            settings, settings.home / f"server-{server}", service_server=server, database_url=url
        ) as stack:
            yield ServerStack(server, stack, url)


@pytest.fixture
def served(server_stack: ServerStack) -> ServerStack:
    """The stack with its service running (a test before may have stopped it)."""
    service = server_stack.stack.service
    if service.process is None or not service.process.alive():
        service.start()
    return server_stack


@pytest.fixture
def stack_db(server_stack: ServerStack) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(server_stack.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def stack_user(stack_db: psycopg.Connection[Any]) -> Callable[[], str]:
    """A user of the test's own with 100 credits, in the stack's database."""

    def make() -> str:
        user_id = f"u-{uuid.uuid4().hex[:12]}"
        stack_db.execute(
            "INSERT INTO users (userid, name, address, credits) VALUES (%s, %s, %s, 100)",
            (user_id, "Server Test", "1 Test Street"),
        )
        return user_id

    return make


def credits_of(db: psycopg.Connection[Any], user_id: str) -> int:
    row = db.execute("SELECT credits FROM users WHERE userid = %s", (user_id,)).fetchone()
    assert row is not None, f"user {user_id} is gone"
    return int(row[0])


def assert_served_by(served: ServerStack) -> int:
    """The service answers as ``served.server``, from the process the lab started, which has
    no child process: it is the process that serves. Its pid."""
    pid = served.process.pid
    health = httpx.get(f"{served.stack.settings.service_url}/health", timeout=5)
    assert health.status_code == 200
    assert health.headers.get("server", "").startswith(SERVER_HEADER[served.server]), health.headers
    command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert COMMAND_LINE[served.server] in command, command
    assert procfs.children_of(pid) == []
    return pid


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


# --- one call per pattern ----------------------------------------------------------------------


def call_simple(ingress: Ingress, user: str) -> int:
    response = ingress.call("simple", "read", user)
    assert response.status_code == 200, response.text
    assert response.json()["userId"] == user
    return 100


def call_keyed_update(ingress: Ingress, user: str) -> int:
    response = ingress.call("keyed", "update", 5, key=user)
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 105, "version": 1}
    return 105


def call_keyed_update_conditional(ingress: Ingress, user: str) -> int:
    response = ingress.call("keyed", "updateConditional", 7, key=user)
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": 107, "version": 1}
    return 107


def call_idempotency_update_twice_with_one_key(ingress: Ingress, user: str) -> int:
    body = {"userId": user, "addCredits": 5}
    key = uuid.uuid4().hex
    first = ingress.call("idempotency", "update", body, idempotency_key=key)
    again = ingress.call("idempotency", "update", body, idempotency_key=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == again.json()
    assert first.json()["credits"] == 105
    return 105


def call_two_phase_commit_update(ingress: Ingress, user: str) -> int:
    response = ingress.call("twoPhaseCommit", "update", {"userId": user, "addCredits": 5})
    assert response.status_code == 200, response.text
    assert response.json()["committed"] is True
    assert response.json()["credits"] == 105
    return 105


PATTERN_CALLS: dict[str, Callable[[Ingress, str], int]] = {
    "simple.read": call_simple,
    "keyed.update": call_keyed_update,
    "keyed.updateConditional": call_keyed_update_conditional,
    "idempotency.update": call_idempotency_update_twice_with_one_key,
    "twoPhaseCommit.update": call_two_phase_commit_update,
}


# --- the tests ---------------------------------------------------------------------------------


def test_restate_registers_the_service_as_a_bidi_http2_deployment_after_its_lifespan_startup(
    served: ServerStack,
) -> None:
    assert_served_by(served)
    ours = [
        d
        for d in served.stack.admin.deployments()
        if d["uri"].rstrip("/") == served.stack.settings.service_url
    ]
    assert [(d["protocol_type"], d["http_version"]) for d in ours] == [("BidiStream", "HTTP/2.0")]
    # The pool opened and the janitor started: the app logs this line after both.
    assert "dbpatterns service started" in served.stack.service.log_path.read_text()


@pytest.mark.parametrize("call", PATTERN_CALLS.values(), ids=PATTERN_CALLS.keys())
def test_every_pattern_applies_its_call_once(
    served: ServerStack,
    stack_db: psycopg.Connection[Any],
    stack_user: Callable[[], str],
    call: Callable[[Ingress, str], int],
) -> None:
    assert_served_by(served)
    user = stack_user()
    expected_credits = call(served.stack.ingress, user)
    assert credits_of(stack_db, user) == expected_credits


@pytest.mark.slow
def test_sigint_stops_the_service_within_seconds_after_its_lifespan_shutdown(
    served: ServerStack, stack_user: Callable[[], str]
) -> None:
    """After a call: restate-server holds its HTTP/2 connection open, and the SDK has taken
    SIGTERM over, so SIGINT must stop the server by itself."""
    pid = assert_served_by(served)
    call_keyed_update(served.stack.ingress, stack_user())
    log_path = served.stack.service.log_path
    logged_before = log_path.stat().st_size

    started = time.monotonic()
    served.process.popen.send_signal(signal.SIGINT)
    exit_code = served.process.popen.wait(STOPS_WITHIN_S + 10)
    took = time.monotonic() - started

    assert not pid_alive(pid)
    assert took < STOPS_WITHIN_S, f"stopped only after {took:.1f} s"
    said = log_since(log_path, logged_before)
    assert exit_code == 0, f"exit code {exit_code}; the service's last words:\n{said[-3000:]}"
    assert "dbpatterns service stopped" in said


@pytest.mark.slow
def test_after_sigkill_a_restarted_service_serves_again(
    served: ServerStack, stack_db: psycopg.Connection[Any], stack_user: Callable[[], str]
) -> None:
    killed = assert_served_by(served)
    served.process.kill()
    assert not pid_alive(killed)

    served.stack.service.start()
    restarted = assert_served_by(served)
    assert restarted != killed
    user = stack_user()
    assert credits_of(stack_db, user) == 100
    assert call_keyed_update(served.stack.ingress, user) == credits_of(stack_db, user)


@pytest.mark.slow
def test_a_paused_service_finishes_the_call_it_held_after_sigcont(
    served: ServerStack, stack_db: psycopg.Connection[Any], stack_user: Callable[[], str]
) -> None:
    """A pause shorter than Restate's inactivity timeout: the same attempt goes on."""
    pid = assert_served_by(served)
    user = stack_user()
    served.process.pause()
    try:
        assert wait_until(lambda: pid_stopped(pid), 5)
        with (
            Ingress(served.stack.settings.ingress_url) as ingress,
            ThreadPoolExecutor(1) as pool,
        ):
            held = pool.submit(call_keyed_update, ingress, user)
            time.sleep(1.0)
            assert not held.done(), "the call was answered while the service was stopped"
            assert credits_of(stack_db, user) == 100
            served.process.resume()
            assert held.result(timeout=30) == 105
    finally:
        served.process.resume()
    assert credits_of(stack_db, user) == 105
    assert assert_served_by(served) == pid
