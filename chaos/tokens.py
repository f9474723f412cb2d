"""The idempotency tokens of the handlers a cell calls: which a cell made, and their expiry.

``idempotency.update`` (and the lab's other idempotent handlers) keep their tokens in
``user_idempotency`` for the stack's TTL; ``shapesBrief`` in the shapes' own table for seconds
(``dbpatterns.examples.shapes``). A token expires two TTLs after its call started.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg import sql

from chaos.handlers import BRIEF_DEPOSIT, CreditHandler
from chaos.stack import ChaosStack
from chaos.verdict import Trial
from dbpatterns.examples import shapes
from dbpatterns.stack import wait_until


def tokens_of_this_cell(stack: ChaosStack, trial: Trial, handler: CreditHandler) -> set[str]:
    """The idempotency tokens ``handler`` inserted since the cell started."""
    table, _ = token_table_and_ttl(stack, handler)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id FROM {} WHERE created_at >= to_timestamp(%s)").format(
                sql.Identifier(table)
            ),
            (trial.started - 1,),
        ).fetchall()
    return {str(token) for (token,) in rows}


def token_table_and_ttl(stack: ChaosStack, handler: CreditHandler) -> tuple[str, timedelta]:
    """The token table of an idempotent handler, and its TTL."""
    if handler == BRIEF_DEPOSIT:
        return shapes.TOKENS_TABLE, shapes.BRIEF_TTL
    return "user_idempotency", stack.token_ttl


def wait_tokens_expired(stack: ChaosStack, trial: Trial, handler: CreditHandler) -> bool:
    """Until the handler's tokens of this cell are gone: two TTLs after the call, and the
    expiry's own delay after that."""
    timeout = 2 * token_table_and_ttl(stack, handler)[1].total_seconds() + 20
    return wait_until(lambda: not tokens_of_this_cell(stack, trial, handler), timeout, interval=0.2)
