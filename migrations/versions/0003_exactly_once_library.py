"""The library's tables, recorded results for user_idempotency, and the invoices example

* ``user_idempotency.result``: ``idempotent_transaction`` stores the work's result with the
  token, so a retry answers what the committed attempt did (rows written before this
  migration have none; they expire within a TTL).
* ``exactly_once_tokens`` and ``exactly_once_prepared_results``: the library's default token
  table and the results of prepared transactions (``dbpatterns.exactly_once.schema``).
* ``invoices`` and ``invoice_payments``: the tables of the example service
  (``dbpatterns.examples.invoices``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("user_idempotency", sa.Column("result", postgresql.JSONB(), nullable=True))
    # The library's tables as they were then (0004 gives tokens their own expiry): written out
    # here, so this revision stays what it was whatever the library's helpers become.
    op.create_table(
        "exactly_once_tokens",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("result", postgresql.JSONB(), nullable=True),
    )
    op.create_index("ix_exactly_once_tokens_created_at", "exactly_once_tokens", ["created_at"])
    op.create_table(
        "exactly_once_prepared_results",
        sa.Column("gid", sa.Text(), primary_key=True),
        sa.Column("result", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "ix_exactly_once_prepared_results_created_at",
        "exactly_once_prepared_results",
        ["created_at"],
    )
    op.create_table(
        "invoices",
        sa.Column("invoice_id", sa.Text(), primary_key=True),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("paid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint("amount_due > 0", name="invoices_amount_due_positive"),
        sa.CheckConstraint("paid >= 0 AND paid <= amount_due", name="invoices_not_overpaid"),
    )
    op.create_table(
        "invoice_payments",
        sa.Column("payment_id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("invoice_id", sa.Text(), sa.ForeignKey("invoices.invoice_id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_invoice_payments_invoice_id", "invoice_payments", ["invoice_id"])


def downgrade() -> None:
    op.drop_table("invoice_payments")
    op.drop_table("invoices")
    op.drop_table("exactly_once_prepared_results")
    op.drop_table("exactly_once_tokens")
    op.drop_column("user_idempotency", "result")
