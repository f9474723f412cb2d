"""The two tables the library writes, for Alembic (autogenerate or a hand-written migration)
or as plain DDL.

* The **token table** of ``idempotent_transaction``: one row per call, written in the same
  transaction as its work: ``outcome`` ``committed`` with the work's ``result`` (JSON; ``null``
  is a result like any other); or, for a call that ended without committing (a terminal error,
  a cancellation), ``failed``, which keeps every later attempt of that call from running its
  work. Each row carries its own expiry, ``expires_at``, indexed for the sweep that deletes the
  expired ones: services with different TTLs can share one table.
* The **prepared-results table** of ``prepared_transaction``: the work's result, written inside
  the prepared transaction and so committed with it; ``COMMIT PREPARED``'s step reads it back.
  Rows are swept by ``sweep_prepared_results`` once older than a retention you choose.

Either table may have any name (several services may keep their own); pass the same name to
the functions that use it.

This module, unlike the rest of the library, needs SQLAlchemy: ``pip install
'dbpatterns[schema]'``. The Alembic helpers take the migration's ``op`` and import nothing of
Alembic themselves.
"""

from __future__ import annotations

from typing import Any

from dbpatterns.exactly_once._tables import COMMITTED, FAILED, PREPARED_RESULTS, TOKENS

try:
    from sqlalchemy import CheckConstraint, Column, DateTime, Index, MetaData, Table, Text, func
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable
except ModuleNotFoundError as missing:  # the library itself needs none of it: only this module
    raise ModuleNotFoundError(
        f"dbpatterns.exactly_once.schema needs SQLAlchemy, and {missing.name} is not installed: "
        "install the extra, pip install 'dbpatterns[schema]'",
        name=missing.name,
    ) from missing

__all__ = [
    "COMMITTED",
    "FAILED",
    "PREPARED_RESULTS",
    "TOKENS",
    "create_tables",
    "ddl",
    "drop_tables",
    "prepared_results_table",
    "token_table",
]


def _token_columns() -> list[Column[Any]]:
    return [
        Column("id", Text, primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("outcome", Text, nullable=False),
        Column("result", postgresql.JSONB, nullable=True),
    ]


def _token_constraints(name: str) -> list[Any]:
    return [
        CheckConstraint(f"outcome IN ('{COMMITTED}', '{FAILED}')", name=f"ck_{name}_outcome"),
        Index(f"ix_{name}_expires_at", "expires_at"),
    ]


def _result_columns() -> list[Column[Any]]:
    return [
        Column("gid", Text, primary_key=True),
        Column("result", postgresql.JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def token_table(metadata: MetaData, name: str = TOKENS) -> Table:
    """``(id text primary key, created_at, expires_at timestamptz, outcome text, result jsonb)``,
    indexed on expires_at."""
    return Table(name, metadata, *_token_columns(), *_token_constraints(name))


def prepared_results_table(metadata: MetaData, name: str = PREPARED_RESULTS) -> Table:
    """``(gid text primary key, result jsonb, created_at timestamptz)``, indexed on created_at."""
    return Table(name, metadata, *_result_columns(), Index(f"ix_{name}_created_at", "created_at"))


def _both_tables(tokens: str, results: str) -> list[Table]:
    metadata = MetaData()
    return [token_table(metadata, tokens), prepared_results_table(metadata, results)]


def ddl(tokens: str = TOKENS, results: str = PREPARED_RESULTS) -> str:
    """The CREATE TABLE and CREATE INDEX statements, for a schema not managed by Alembic."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statements: list[str] = []
    for table in _both_tables(tokens, results):
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        statements += [str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes]
    return ";\n\n".join(statements) + ";\n"


def create_tables(op: Any, tokens: str = TOKENS, results: str = PREPARED_RESULTS) -> None:
    """In an Alembic migration's ``upgrade()``: ``create_tables(op)``."""
    op.create_table(tokens, *_token_columns(), *_token_constraints(tokens)[:1])
    op.create_index(f"ix_{tokens}_expires_at", tokens, ["expires_at"])
    op.create_table(results, *_result_columns())
    op.create_index(f"ix_{results}_created_at", results, ["created_at"])


def drop_tables(op: Any, tokens: str = TOKENS, results: str = PREPARED_RESULTS) -> None:
    """In an Alembic migration's ``downgrade()``."""
    for name in (results, tokens):
        op.drop_table(name)
