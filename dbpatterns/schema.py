"""The tables, as SQLAlchemy Core metadata, which the tests check the migrations against.

The DDL itself lives in ``migrations/`` (the one schema source); this module only describes it.
The handlers' SQL is plain text next to the code that runs it (see ``dbpatterns.db``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("userid", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("credits", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("credits >= 0", name="users_credits_not_negative"),
)

user_idempotency = Table(
    "user_idempotency",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_user_idempotency_created_at", "created_at"),
)
