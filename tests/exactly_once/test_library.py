"""The library stands on its own: its tables are what its DDL creates, its fault points are
off unless a host switches them on, and neither it nor the example imports the lab."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine

import dbpatterns
from dbpatterns.config import Settings
from dbpatterns.exactly_once import faults, schema
from dbpatterns.service import failpoints
from tests.exactly_once.conftest import FakeContext

PACKAGE = Path(dbpatterns.__file__).parent


def test_the_ddl_creates_exactly_the_tables_the_library_describes(
    scratch_database: str,
) -> None:
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(schema.ddl(tokens="my_tokens", results="my_results"))
    described = MetaData()
    schema.token_table(described, "my_tokens")
    schema.prepared_results_table(described, "my_results")
    engine = create_engine(scratch_database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_server_default": True})
        diff = compare_metadata(context, described)
        checks = conn.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'c'"
            " AND conrelid = 'my_tokens'::regclass"
        ).all()
    engine.dispose()
    assert diff == []
    assert [tuple(c) for c in checks] == [
        (
            "ck_my_tokens_outcome",
            "CHECK ((outcome = ANY (ARRAY['committed'::text, 'failed'::text])))",
        )
    ]


def test_fault_points_do_nothing_without_a_hook_whatever_the_environment(
    no_hook: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(failpoints.ENV_SPEC, "invoices.pay.after-commit=kill")
    asyncio.run(faults.reach(FakeContext(), "after-commit"))  # type: ignore[arg-type]
    # still here: nothing in the environment reaches the library without its host


def test_the_lab_routes_fault_points_to_its_failpoints_only_when_a_setting_is_given(
    no_hook: None, tmp_path: Path
) -> None:
    assert failpoints.install_library_hook(Settings(failpoints="")) is False
    assert faults._hook is None
    assert failpoints.install_library_hook(Settings(failpoints_file=tmp_path / "fp")) is True
    assert faults._hook is failpoints.hit


def test_a_fault_point_is_named_after_the_handler_that_reaches_it(no_hook: None) -> None:
    seen: list[tuple[str, str]] = []

    async def record(name: str, invocation: str) -> None:
        seen.append((name, invocation))

    class Handler:
        name = "pay"

        class service_tag:
            name = "invoices"

    ctx: Any = FakeContext()
    ctx.handler = Handler()
    faults.install(record)
    asyncio.run(faults.reach(ctx, "after-commit"))
    assert seen == [("invoices.pay.after-commit", "inv_1abcdefghijklmnop")]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["exactly_once", "examples"])
def test_the_library_and_its_example_import_nothing_of_the_lab(folder: str) -> None:
    for path in sorted((PACKAGE / folder).glob("*.py")):
        ours = {m for m in imports_of(path) if m.startswith("dbpatterns")}
        foreign = {m for m in ours if not m.startswith("dbpatterns.exactly_once")}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_no_lab_pattern_imports_another_pattern() -> None:
    patterns = PACKAGE / "patterns"
    modules = {p.stem for p in patterns.glob("*.py")} - {"__init__", "users", "models"}
    for name in sorted(modules):
        ours = imports_of(patterns / f"{name}.py")
        others = {f"dbpatterns.patterns.{m}" for m in modules - {name}}
        assert not ours & others, f"{name} imports {sorted(ours & others)}"
