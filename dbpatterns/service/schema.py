"""The tables, as SQLAlchemy Core metadata, which the tests check the migrations against.

The DDL itself lives in ``migrations/`` (the one schema source); this module only describes it.
The handlers' SQL is plain text next to the code that runs it (see ``dbpatterns.service.db``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)

from dbpatterns.exactly_once.schema import prepared_results_table, token_table

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("userid", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("credits", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    Column("written_by", Text, nullable=True),  # keyed.updateConditional's mark
    CheckConstraint("credits >= 0", name="users_credits_not_negative"),
)

#: A token table of ``dbpatterns.exactly_once`` under the lab's own name.
user_idempotency = token_table(metadata, "user_idempotency")
exactly_once_tokens = token_table(metadata)
exactly_once_prepared_results = prepared_results_table(metadata)

# The example service's tables (``dbpatterns.examples.invoices``).
invoices = Table(
    "invoices",
    metadata,
    Column("invoice_id", Text, primary_key=True),
    Column("amount_due", BigInteger, nullable=False),
    Column("paid", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    Column("written_by", Text, nullable=True),  # invoice.pay's mark
    CheckConstraint("amount_due > 0", name="invoices_amount_due_positive"),
    CheckConstraint("paid >= 0 AND paid <= amount_due", name="invoices_not_overpaid"),
)
invoice_payments = Table(
    "invoice_payments",
    metadata,
    Column("payment_id", BigInteger, Identity(), primary_key=True),
    Column("invoice_id", Text, ForeignKey("invoices.invoice_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_invoice_payments_invoice_id", "invoice_id"),
)

# The shapes example's tables (``dbpatterns.examples.shapes``).
shapes_accounts = Table(
    "shapes_accounts",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    Column("written_by", Text, nullable=True),
    CheckConstraint("balance >= 0", name="shapes_accounts_balance_not_negative"),
)
shapes_entries = Table(
    "shapes_entries",
    metadata,
    Column("entry_id", BigInteger, Identity(), primary_key=True),
    Column("account_id", Text, ForeignKey("shapes_accounts.account_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_shapes_entries_account_id", "account_id"),
)
shapes_tokens = token_table(metadata, "shapes_tokens")
shapes_prepared_results = prepared_results_table(metadata, "shapes_prepared_results")
