"""The README's "Use it in your own service" example, run as a user would run it: its code
copied out of the README into a module of its own, served by hypercorn in its own process,
registered with restate-server, type-checked with mypy --strict. Its handler records a
reservation once across a retry after the commit (the fault is the library's own hook,
installed by the launcher as a test harness would), and once per idempotency key; its tokens'
private expiry works in a process started after the call, before any reservation ran there; a
body that does not fit its input is answered 400 and runs nothing; hypercorn serves it without
a lifespan error; and the README's curl lines answer what their comments say."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dbpatterns.exactly_once.calls import INVOCATION_ID
from dbpatterns.stack import free_port, register_deployment
from dbpatterns.stack.client import Admin, Ingress
from tests.conftest import RestateEndpoints
from tests.readme_code import README, SECTION, readme_example

POINT = "orders.reserve.after-commit"
#: The README's TTL, and the one the expiry test serves its copy with: a reservation commits
#: within it, and its token's expiry is due two of them after the call.
README_TTL = "ttl=timedelta(days=1)"
SHORT_TTL_S = 5
#: How long past its due time an expiry may take to run and delete, on a loaded machine.
SLACK_S = 30.0

#: Imports the README's module and shows the library's INFO lines (each expiry's outcome) in
#: the service's log. With ``FAULT_MARK`` set, makes the step fail once right after the commit
#: (through the library's fault hook), leaving a mark that it did.
LAUNCHER = f'''
import logging
import os
from pathlib import Path

from dbpatterns.exactly_once import faults
from orders_app import app  # noqa: F401

library = logging.getLogger("dbpatterns.exactly_once")
library.setLevel(logging.INFO)
shown = logging.StreamHandler()
shown.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(name)s: %(message)s"))
library.addHandler(shown)

if "FAULT_MARK" in os.environ:
    MARK = Path(os.environ["FAULT_MARK"])

    async def fail_once_after_commit(name: str, invocation: str) -> None:
        if name == "{POINT}" and not MARK.exists():
            MARK.write_text(invocation)
            raise RuntimeError("injected: the step fails after its commit")

    faults.install(fail_once_after_commit)
'''


def readme_section() -> str:
    return README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]


def readme_steps() -> str:
    """The shell block of the section: set up, serve, call, clean up."""
    match = re.search(r"```bash\n(.*?)```", readme_section(), re.S)
    assert match, "the README's section has no shell steps"
    return match.group(1)


def with_short_ttl(code: str) -> str:
    """The README's code with a TTL of ``SHORT_TTL_S`` seconds instead of its day."""
    assert code.count(README_TTL) == 1, f"the README's example no longer sets {README_TTL}"
    return code.replace(README_TTL, f"ttl=timedelta(seconds={SHORT_TTL_S})")


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting {what()}"
        time.sleep(0.2)


class ReadmeService:
    """A module in ``folder`` served by hypercorn (through the launcher) on one port, in a
    process of its own that can be stopped and started again; each start logs to its own file."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Path:
        """Start a process and wait until it answers; its log file."""
        assert self._proc is None, "already running"
        log_path = self.folder / f"service-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        command = ["-m", "hypercorn", "launch:app", "--bind", f"127.0.0.1:{self.port}"]
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, *command],
                cwd=self.folder,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 30, lambda: f"for {self.url} to answer: {log_path.read_text()}")
        return log_path

    def _answers(self) -> bool:
        assert self._proc is not None
        assert self._proc.poll() is None, f"the service exited: {self.logs[-1].read_text()}"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        """SIGINT, as the README says (the SDK takes SIGTERM for itself); the exit status, or
        None if it had to be killed (or was not running)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None


@pytest.fixture
def serve_readme(
    tmp_path: Path, database_url: str, restate_server: RestateEndpoints
) -> Iterator[Callable[..., ReadmeService]]:
    """``serve_readme(code, fault_mark=None)``: ``code`` as the user's module ``orders_app``,
    served and registered (the newest deployment of ``orders``); stopped after the test."""
    services: list[ReadmeService] = []

    def serve(code: str, fault_mark: Path | None = None) -> ReadmeService:
        folder = tmp_path / f"orders-{len(services) + 1}"
        folder.mkdir()
        (folder / "orders_app.py").write_text(code)
        (folder / "launch.py").write_text(LAUNCHER)
        env = {**os.environ, "DATABASE_URL": database_url}
        env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")])
        if fault_mark is not None:
            env["FAULT_MARK"] = str(fault_mark)
        service = ReadmeService(folder, env)
        services.append(service)
        service.start()
        register_deployment(restate_server.admin_url, service.url)
        return service

    try:
        yield serve
    finally:
        for service in services:
            service.stop()


@pytest.fixture
def users_service(serve_readme: Callable[..., ReadmeService], tmp_path: Path) -> Path:
    """The README's service as written, its fault armed; the fault's mark file."""
    mark = tmp_path / "fault-fired"
    serve_readme(readme_example(), fault_mark=mark)
    return mark


@pytest.fixture
def stock(db: psycopg.Connection[Any]) -> str:
    db.execute("CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, available int NOT NULL)")
    sku = f"sku-{uuid.uuid4().hex[:8]}"
    db.execute("INSERT INTO stock VALUES (%s, 10)", (sku,))
    return sku


def available(db: psycopg.Connection[Any], sku: str) -> int:
    row = db.execute("SELECT available FROM stock WHERE sku = %s", (sku,)).fetchone()
    assert row is not None
    return int(row[0])


def tokens_of(db: psycopg.Connection[Any], invocation: str) -> dict[str, str]:
    """The token rows of ``invocation``'s calls: outcome by token id."""
    rows = db.execute(
        "SELECT id, outcome FROM exactly_once_tokens WHERE starts_with(id, %s)",
        (f"{invocation}:",),
    ).fetchall()
    return {str(token): str(outcome) for token, outcome in rows}


def expiries_of(admin: Admin, invocation: str) -> list[dict[str, Any]]:
    """The expiry calls ``invocation`` scheduled, as Restate knows them (a completed one is kept
    a day): status, outcome, and the attempts and last failure of one still retrying."""
    assert INVOCATION_ID.fullmatch(invocation), invocation  # Restate's SQL takes no parameters
    where = f"invoked_by_id = '{invocation}' AND target_handler_name = 'expireIdempotencyKey'"
    columns = "id, status, completion_result, retry_count, last_failure"
    return admin.query(f"SELECT {columns} FROM sys_invocation WHERE {where}")  # noqa: S608


def test_the_readme_example_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    """Against the library's own types (``py.typed``): a call that does not fit fails here.
    (Here against the checkout; the install check, ``tests/install/check.py``, checks it against
    the wheel installed outside it.)"""
    module = tmp_path / "orders_app.py"
    module.write_text(readme_example())
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(module)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(README.parent)},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_readme_example_reserves_once_across_a_retry_after_the_commit(
    users_service: Path, stock: str, db: psycopg.Connection[Any], restate_server: RestateEndpoints
) -> None:
    with Ingress(restate_server.ingress_url) as ingress:
        key = f"reserve-{uuid.uuid4()}"
        first = ingress.call(
            "orders", "reserve", {"sku": stock, "quantity": 3}, idempotency_key=key
        )
        assert users_service.exists(), "the fault after the commit did not fire: proves nothing"
        assert first.status_code == 200, first.text
        assert first.json() == {"sku": stock, "left": 7}
        assert available(db, stock) == 7  # the retry after the commit took nothing more

        again = ingress.call(
            "orders", "reserve", {"sku": stock, "quantity": 3}, idempotency_key=key
        )
        assert again.json() == first.json()
        other = ingress.call("orders", "reserve", {"sku": stock, "quantity": 2})
        assert other.json() == {"sku": stock, "left": 5}
        missing = ingress.call("orders", "reserve", {"sku": "no-such-sku", "quantity": 1})
        assert missing.status_code == 404, missing.text
    assert available(db, stock) == 5
    # One committed token per reservation, with its result (the 404 left a 'failed' one).
    assert list(tokens_of(db, first.headers["x-restate-id"]).values()) == ["committed"]
    assert list(tokens_of(db, missing.headers["x-restate-id"]).values()) == ["failed"]
    rows = db.execute(
        "SELECT result FROM exactly_once_tokens"
        " WHERE outcome = 'committed' AND result->>'sku' = %s",
        (stock,),
    ).fetchall()
    assert sorted(r[0]["left"] for r in rows) == [5, 7]


def test_the_readme_expiry_deletes_a_token_in_a_restarted_process_before_any_reservation(
    serve_readme: Callable[..., ReadmeService],
    stock: str,
    db: psycopg.Connection[Any],
    restate_server: RestateEndpoints,
    admin: Admin,
) -> None:
    """The README's service opens its pool when it starts (``with_pool``), so every handler
    finds it open, the tokens' private expiry included: a token's expiry, due after the service
    restarted, deletes it in the new process, where no reservation has run. (Opened by
    ``reserve`` alone, the pool stayed closed there, and each expiry failed with PoolClosed
    until a reservation came.)"""
    service = serve_readme(with_short_ttl(readme_example()))
    with Ingress(restate_server.ingress_url) as ingress:
        reserved = ingress.call("orders", "reserve", {"sku": stock, "quantity": 3})
    assert reserved.status_code == 200, reserved.text
    invocation = reserved.headers["x-restate-id"]
    ((token, outcome),) = tokens_of(db, invocation).items()
    assert outcome == "committed"

    service.stop()
    # Still there with the first process gone: its expiry (due two TTLs after the call) can
    # only run in the next one.
    assert tokens_of(db, invocation) == {token: "committed"}, (
        "the token expired before the first process stopped: proves nothing (raise SHORT_TTL_S)"
    )
    restarted_log = service.start()  # same port: the registered deployment is unchanged

    def diagnosis() -> str:
        expiries = [
            {**e, "last_failure": (e.get("last_failure") or "").split("\n")[0]}
            for e in expiries_of(admin, invocation)
        ]
        return f"for {token} to expire; its expiry: {expiries}"

    wait_until(lambda: not tokens_of(db, invocation), 2 * SHORT_TTL_S + SLACK_S, diagnosis)
    # Deleted by its own expiry, in the restarted process, which never failed to reach the pool.
    expired = re.compile(rf"token {re.escape(token)} expiry: deleted=True")
    wait_until(
        lambda: bool(expired.search(restarted_log.read_text())),
        10,
        lambda: f"for the expiry's line in the new log: {restarted_log.read_text()}",
    )
    assert not expired.search(service.logs[0].read_text()), "the first process ran the expiry"
    assert "PoolClosed" not in restarted_log.read_text()
    expiries = expiries_of(admin, invocation)
    assert [(e["status"], e.get("completion_result")) for e in expiries] == [
        ("completed", "success")
    ], expiries
    assert available(db, stock) == 7  # one reservation, and no other in the new process


def test_the_readme_example_answers_a_body_that_does_not_fit_400_naming_the_field_and_runs_nothing(
    serve_readme: Callable[..., ReadmeService],
    stock: str,
    db: psycopg.Connection[Any],
    admin: Admin,
    restate_server: RestateEndpoints,
) -> None:
    """Not the SDK's 500 ("Unable to parse an input argument", which reads as the service's
    fault): a terminal 400 that says which field is wrong, before the handler runs."""
    serve_readme(readme_example())
    bodies = {
        "quantity": b'{"sku": "%s", "quantity": "x"}' % stock.encode(),
        "sku": b'{"quantity": 1}',
        "body": b'{"sku": ',
    }
    with Ingress(restate_server.ingress_url) as ingress:
        for field, body in bodies.items():
            answer = ingress.call("orders", "reserve", raw_body=body)
            assert answer.status_code == 400, answer.text
            message = answer.json()["message"]
            assert message.startswith("invalid request for Reserve: "), message
            assert f"{field}: " in message, message
            invocation = answer.headers["x-restate-id"]
            assert tokens_of(db, invocation) == {}  # no transaction ran
            (row,) = admin.query(
                f"SELECT status, completion_result FROM sys_invocation WHERE id = '{invocation}'"  # noqa: S608
            )
            assert (row["status"], row.get("completion_result")) == ("completed", "failure")
    assert available(db, stock) == 10


def test_hypercorn_serves_the_readme_example_without_a_lifespan_error_and_stops_on_sigint(
    serve_readme: Callable[..., ReadmeService], restate_server: RestateEndpoints, stock: str
) -> None:
    service = serve_readme(readme_example())
    with Ingress(restate_server.ingress_url) as ingress:  # the SDK's signal handling is in place
        assert ingress.call("orders", "reserve", {"sku": stock, "quantity": 1}).status_code == 200
    assert service.stop() == 0, service.logs[-1].read_text()
    log = service.logs[-1].read_text()
    assert "Lifespan" not in log, log  # "ASGI Framework Lifespan error, continuing without ..."


def test_the_readme_curl_lines_answer_what_their_comments_say(
    serve_readme: Callable[..., ReadmeService],
    db: psycopg.Connection[Any],
    restate_server: RestateEndpoints,
) -> None:
    """Run as written, but against this session's ingress, on the README's sku ``apple``
    (10 in stock, as its steps insert it)."""
    assert shutil.which("curl"), "curl is needed to run the README's curl lines"
    db.execute("CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, available int NOT NULL)")
    db.execute(
        "INSERT INTO stock VALUES ('apple', 10) ON CONFLICT (sku) DO UPDATE SET available = 10"
    )
    serve_readme(readme_example())
    lines = [line for line in readme_steps().splitlines() if line.startswith("curl ")]
    assert len(lines) == 2, lines
    keyed, malformed = (
        line.replace("curl 127.0.0.1:8080", f"curl -s {restate_server.ingress_url}")
        for line in lines
    )

    def run(line: str) -> Any:
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert run(keyed) == {"sku": "apple", "left": 7}
    assert run(keyed) == {"sku": "apple", "left": 7}  # "the same key again answers" it
    assert available(db, "apple") == 7  # "... and takes nothing"
    refused = run(malformed)
    assert refused["code"] == 400, refused  # "# 400: quantity: ..."
    assert "quantity: " in refused["message"], refused
