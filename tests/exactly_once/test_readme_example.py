"""The README's "Use it in your own service" example, run as a user would run it: its code
copied out of the README into a module of its own, served by hypercorn in its own process,
registered with restate-server, type-checked with mypy --strict. Its handler records a
reservation once across a retry after the commit (the fault is the library's own hook,
installed by the launcher as a test harness would), and once per idempotency key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbpatterns.client import Ingress
from dbpatterns.stack import free_port, register_deployment
from tests.conftest import RestateEndpoints

README = Path(__file__).parents[2] / "README.md"
POINT = "orders.reserve.after-commit"

#: Imports the README's module, and makes its step fail once right after the commit (through
#: the library's fault hook), leaving a mark that it did.
LAUNCHER = f'''
import os
from pathlib import Path

from dbpatterns.exactly_once import faults
from orders_app import app  # noqa: F401

MARK = Path(os.environ["FAULT_MARK"])


async def fail_once_after_commit(name: str, invocation: str) -> None:
    if name == "{POINT}" and not MARK.exists():
        MARK.write_text(invocation)
        raise RuntimeError("injected: the step fails after its commit")


faults.install(fail_once_after_commit)
'''


def readme_example() -> str:
    section = README.read_text().split("## Use it in your own service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's section has no python example"
    return match.group(1)


@pytest.fixture
def users_service(
    tmp_path: Path, database_url: str, restate_server: RestateEndpoints
) -> Iterator[Path]:
    """The README's service, served and registered; yields the fault's mark file."""
    (tmp_path / "orders_app.py").write_text(readme_example())
    (tmp_path / "launch.py").write_text(LAUNCHER)
    port = free_port()
    mark = tmp_path / "fault-fired"
    env = {**os.environ, "DATABASE_URL": database_url, "FAULT_MARK": str(mark)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "launch:app", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        register_deployment(restate_server.admin_url, f"http://127.0.0.1:{port}")
        yield mark
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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


def test_the_readme_example_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    """Against the library's own types (``py.typed``): a call that does not fit fails here.
    (mypy cannot follow the import hook of an editable install, so it is pointed at the
    source; an installed wheel carries the package and its marker, see the next test.)"""
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


def test_the_built_package_carries_the_library_and_its_type_marker(tmp_path: Path) -> None:
    """Built from a copy of the sources, so the build leaves nothing in the checkout."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "results")
    for part in ("dbpatterns", "chaos"):
        shutil.copytree(README.parent / part, source / part, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(README.parent / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("dbpatterns-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dbpatterns/py.typed" in names
    assert {
        f"dbpatterns/exactly_once/{m}.py"
        for m in ("__init__", "versioned", "idempotent", "prepared", "schema", "faults", "errors")
    } <= names


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
    deadline = time.monotonic() + 5
    while True:  # the token row of each reservation, with its result
        rows = db.execute(
            "SELECT result FROM exactly_once_tokens WHERE result->>'sku' = %s", (stock,)
        ).fetchall()
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(r[0]["left"] for r in rows) == [5, 7]
