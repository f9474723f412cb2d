"""Exactly-once PostgreSQL writes from Restate handlers: three patterns, one import.

* ``versioned_update``: a durable read of the state and its version, then a write conditioned
  on that version. Exactly once while every write of the row goes through one virtual object
  key. No table of its own; one more round trip than a plain UPDATE.
* ``idempotent_transaction``: the caller's work in one transaction with the invocation's token
  and its result. Exactly once whoever else writes the rows. Needs a token table and a private
  expiry handler (``IdempotencyTokens``).
* ``prepared_transaction``: the caller's work PREPAREd in one durable step, COMMIT PREPARED in
  the next, rolled back on failure and cancellation. Exactly once, or not at all; needs
  ``max_prepared_transactions`` > 0, a results table and a janitor for killed invocations.

Each takes the caller's psycopg async pool and returns the caller's typed result (a pydantic
model, a dataclass or a JSON value), journaled with its type. Each module opens with its
guarantee and the failure windows it closes. Tables: ``dbpatterns.exactly_once.schema``.
"""

from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.errors import database_errors
from dbpatterns.exactly_once.idempotent import IdempotencyTokens, Once, idempotent_transaction
from dbpatterns.exactly_once.prepared import prepared_transaction
from dbpatterns.exactly_once.versioned import Versioned, versioned_update

__all__ = [
    "Connection",
    "IdempotencyTokens",
    "Once",
    "Pool",
    "Versioned",
    "database_errors",
    "idempotent_transaction",
    "prepared_transaction",
    "versioned_update",
]
