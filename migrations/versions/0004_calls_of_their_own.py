"""Every call its own token expiry and writer mark, and the shapes example's tables

* Token tables (``user_idempotency``, ``exactly_once_tokens``): each row carries its own expiry
  (``expires_at``, indexed; the sweep by ``created_at`` and its index go) and its call's
  ``outcome`` (``committed``, or ``failed``: ended without its work, so no late attempt may run
  it). Rows written before this migration committed their work; they expire two days after
  they were created, later than any TTL the lab has used.
* ``users.written_by`` and ``invoices.written_by``: the mark a versioned update leaves on the
  row (the id of the call that last wrote it).
* ``shapes_accounts``, ``shapes_entries``, ``shapes_tokens``, ``shapes_prepared_results``: the
  tables of the shapes example (``dbpatterns.examples.shapes``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from dbpatterns.exactly_once import schema

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOKEN_TABLES = ("user_idempotency", schema.TOKENS)
OLD_TOKENS_EXPIRE_AFTER = timedelta(days=2)


def upgrade() -> None:
    for table in TOKEN_TABLES:
        op.add_column(table, sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        op.add_column(table, sa.Column("outcome", sa.Text(), nullable=True))
        tokens = sa.table(
            table, sa.column("created_at"), sa.column("expires_at"), sa.column("outcome")
        )
        op.execute(
            tokens.update().values(
                expires_at=tokens.c.created_at + OLD_TOKENS_EXPIRE_AFTER,
                outcome=schema.COMMITTED,
            )
        )
        op.alter_column(table, "expires_at", nullable=False)
        op.alter_column(table, "outcome", nullable=False)
        op.create_check_constraint(
            f"ck_{table}_outcome", table, f"outcome IN ('{schema.COMMITTED}', '{schema.FAILED}')"
        )
        op.drop_index(f"ix_{table}_created_at", table_name=table)
        op.create_index(f"ix_{table}_expires_at", table, ["expires_at"])
    for table in ("users", "invoices"):
        op.add_column(table, sa.Column("written_by", sa.Text(), nullable=True))
    op.create_table(
        "shapes_accounts",
        sa.Column("account_id", sa.Text(), primary_key=True),
        sa.Column("balance", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("written_by", sa.Text(), nullable=True),
        sa.CheckConstraint("balance >= 0", name="shapes_accounts_balance_not_negative"),
    )
    op.create_table(
        "shapes_entries",
        sa.Column("entry_id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "account_id", sa.Text(), sa.ForeignKey("shapes_accounts.account_id"), nullable=False
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_shapes_entries_account_id", "shapes_entries", ["account_id"])
    schema.create_tables(op, tokens="shapes_tokens", results="shapes_prepared_results")


def downgrade() -> None:
    schema.drop_tables(op, tokens="shapes_tokens", results="shapes_prepared_results")
    op.drop_table("shapes_entries")
    op.drop_table("shapes_accounts")
    for table in ("users", "invoices"):
        op.drop_column(table, "written_by")
    for table in TOKEN_TABLES:
        op.drop_index(f"ix_{table}_expires_at", table_name=table)
        op.create_index(f"ix_{table}_created_at", table, ["created_at"])
        op.drop_constraint(f"ck_{table}_outcome", table)
        op.drop_column(table, "outcome")
        op.drop_column(table, "expires_at")
