"""Exactly-once PostgreSQL writes from Restate handlers: three patterns, one import.

* ``idempotent_transaction``: the caller's work in one transaction with the call's token and its
  result. At most once whoever else writes the rows, and every answer is final: a result means
  committed once, an error means never. Needs a token table and a private expiry handler
  (``IdempotencyTokens``); a call must commit within the tokens' TTL.
* ``prepared_transaction``: the caller's work PREPAREd in one durable step, COMMIT PREPARED in
  the next, rolled back on failure and cancellation. Needs ``max_prepared_transactions`` > 0, a
  results table and a janitor for killed invocations (``janitor``).
* ``versioned_update``: a durable read of the state and its version, then a write conditioned
  on that version that marks the row with the call. Exactly once while every write of the row
  goes through one virtual object key; a write that lost the row fails instead. No table of its
  own; a ``written_by`` column on yours.

Each takes the caller's psycopg async pool and returns ``Done(result, call_id)``: the work's
typed result as committed (a pydantic model, a dataclass or a JSON value, ``None`` included)
and the id the database records the call under. Each handler may call them several times, one
after another or at once. Each module opens with its guarantee, what each answer means under
retry, zombie, cancel and kill, and the failure windows it closes. Tables:
``dbpatterns.exactly_once.schema`` (their DDL as plain SQL; as SQLAlchemy tables and Alembic
helpers with the ``schema`` extra). PostgreSQL 13 or newer.

Around them, for the service that uses them: ``with_pool`` serves the Restate app with the pool
open from the server's start to its stop, and ``input_errors`` answers a request body that does
not fit the handler's input with a 400 that names the problem.
"""

from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.asgi import with_pool
from dbpatterns.exactly_once.calls import Done, Retry
from dbpatterns.exactly_once.errors import database_errors
from dbpatterns.exactly_once.idempotent import idempotent_transaction
from dbpatterns.exactly_once.inputs import input_errors
from dbpatterns.exactly_once.janitor import RestateAdmin, run_janitor
from dbpatterns.exactly_once.prepared import prepared_transaction
from dbpatterns.exactly_once.tokens import IdempotencyTokens
from dbpatterns.exactly_once.versioned import Marked, versioned_update

__all__ = [
    "Connection",
    "Done",
    "IdempotencyTokens",
    "Marked",
    "Pool",
    "RestateAdmin",
    "Retry",
    "database_errors",
    "idempotent_transaction",
    "input_errors",
    "prepared_transaction",
    "run_janitor",
    "versioned_update",
    "with_pool",
]
