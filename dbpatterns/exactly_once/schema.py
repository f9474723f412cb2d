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

``ddl`` is plain SQL and needs nothing more than the library. The SQLAlchemy tables and the
Alembic helpers need SQLAlchemy: ``pip install 'dbpatterns[schema]'``; the Alembic helpers take
the migration's ``op`` and import nothing of Alembic themselves. The two descriptions are held
to the same tables by a test (``tests/exactly_once/test_schema.py``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from dbpatterns.exactly_once._tables import COMMITTED, FAILED, PREPARED_RESULTS, TOKENS

if TYPE_CHECKING:
    from sqlalchemy import Column, MetaData, Table

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

#: A table name ``ddl`` writes as it is: lower case, as Postgres folds unquoted names.
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

DDL = """\
CREATE TABLE {tokens} (
    id TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    outcome TEXT NOT NULL,
    result JSONB,
    PRIMARY KEY (id),
    CONSTRAINT ck_{tokens}_outcome CHECK (outcome IN ('{committed}', '{failed}'))
);

CREATE INDEX ix_{tokens}_expires_at ON {tokens} (expires_at);

CREATE TABLE {results} (
    gid TEXT NOT NULL,
    result JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (gid)
);

CREATE INDEX ix_{results}_created_at ON {results} (created_at);
"""


def ddl(tokens: str = TOKENS, results: str = PREPARED_RESULTS) -> str:
    """The CREATE TABLE and CREATE INDEX statements, for a schema not managed by Alembic."""
    for name in (tokens, results):
        if not NAME.fullmatch(name):
            raise ValueError(
                f"table name {name!r}: ddl() writes names of lower-case letters, digits and "
                "underscores (63 at most); create a table of another name with token_table() "
                "and SQLAlchemy"
            )
    return DDL.format(tokens=tokens, results=results, committed=COMMITTED, failed=FAILED)


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ModuleNotFoundError as missing:  # the library itself needs none of it
        raise ModuleNotFoundError(
            "dbpatterns.exactly_once.schema's tables need SQLAlchemy, which is not installed: "
            "install the extra, pip install 'dbpatterns[schema]' (ddl() needs none)",
            name=missing.name,
        ) from missing
    return sqlalchemy


def _token_columns() -> list[Column[Any]]:
    sa = _sqlalchemy()
    from sqlalchemy.dialects.postgresql import JSONB

    stamp = sa.DateTime(timezone=True)
    return [
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("created_at", stamp, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", stamp, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("result", JSONB, nullable=True),
    ]


def _token_constraints(name: str) -> list[Any]:
    sa = _sqlalchemy()
    return [
        sa.CheckConstraint(f"outcome IN ('{COMMITTED}', '{FAILED}')", name=f"ck_{name}_outcome"),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
    ]


def _result_columns() -> list[Column[Any]]:
    sa = _sqlalchemy()
    from sqlalchemy.dialects.postgresql import JSONB

    return [
        sa.Column("gid", sa.Text, primary_key=True),
        sa.Column("result", JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def token_table(metadata: MetaData, name: str = TOKENS) -> Table:
    """``(id text primary key, created_at, expires_at timestamptz, outcome text, result jsonb)``,
    indexed on expires_at."""
    table: Table = _sqlalchemy().Table(name, metadata, *_token_columns(), *_token_constraints(name))
    return table


def prepared_results_table(metadata: MetaData, name: str = PREPARED_RESULTS) -> Table:
    """``(gid text primary key, result jsonb, created_at timestamptz)``, indexed on created_at."""
    sa = _sqlalchemy()
    index = sa.Index(f"ix_{name}_created_at", "created_at")
    table: Table = sa.Table(name, metadata, *_result_columns(), index)
    return table


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
