"""user_idempotency: an index on created_at, for the sweep of tokens older than their TTL

Every ``idempotency.expireIdempotencyKey`` call also deletes the tokens older than the TTL
(a token whose own expiry was killed with its invocation goes with the next one); the index
keeps that a range read instead of a scan of the whole table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_user_idempotency_created_at", "user_idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_user_idempotency_created_at", table_name="user_idempotency")
