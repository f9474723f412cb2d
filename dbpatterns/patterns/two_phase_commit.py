"""twoPhaseCommit: exactly-once credit updates through PostgreSQL prepared transactions.

Guarantee: ``update`` adds the credits exactly once per invocation, or not at all when the
invocation fails, is cancelled or is killed; and no prepared transaction of a finished
invocation stays behind holding its row locks.

How (``dbpatterns.exactly_once.prepared_transaction``): two durable steps. The first adds the
credits in a transaction, stores the balance it leaves in ``exactly_once_prepared_results``
(same transaction), notes the transaction's id (``pg_current_xact_id()``) and ends it with
``PREPARE TRANSACTION gid`` instead of COMMIT: the change is now on disk, survives crashes of
the service and of Postgres, but nobody sees it yet. Restate journals ``(gid, xid)``. The second
runs ``COMMIT PREPARED gid`` and answers with the committed balance. The gid is
``dbpatterns-2pc:<invocation id>:<16 hex digits>`` (the call's id, drawn from ``ctx.uuid()``):
every attempt of an invocation uses the same one, so a retry finds what its predecessor left,
and the janitor can ask Restate about the invocation behind it.

The failure windows, and how each is closed (in the library, ``exactly_once/prepared.py``):

* Crash after PREPARE, before Restate journals the step: the retry of ``prepare`` finds a
  transaction already prepared under its gid. Only an earlier attempt of this invocation, with
  the same journaled input, can have prepared it, so it is exactly what the retry would
  prepare: the retry ADOPTS it (its xid, and the balance it leaves) and touches nothing. The
  prepare step never rolls back a prepared transaction.
* A zombie attempt (paused inside ``prepare``) that wakes after a retry prepared, before the
  retry's COMMIT PREPARED: it finds the retry's transaction and adopts it too; it rolls back
  nothing, so the retry's commit goes through and the call succeeds, once.
* A zombie that wakes after the commit collides with the committed result row (keyed by the
  gid): it learns the credits are in, rolls its transaction back and prepares nothing. Once
  that row is swept (after the token TTL), such a zombie would prepare again; that second
  transaction is never committed: the commit step commits only the xid it journaled, and
  ``dbpatterns.service.janitor`` rolls back a prepared transaction whose invocation has completed.
* Crash after COMMIT PREPARED, before Restate journals the step: the retry's COMMIT PREPARED
  fails with 42704 (no such gid). Instead of failing forever (as the TypeScript example does),
  the commit step reads the balance from ``exactly_once_prepared_results``, whose row commits
  exactly with the prepared transaction: there means done; gone means someone rolled the
  prepared transaction back, the credits were not added, and the invocation fails saying so.
  Nothing is assumed.
* A terminal error or a cancellation (Restate's 409) anywhere after ``prepare`` started: a
  third durable step rolls the prepared transaction back before the error is re-raised. It first
  waits for any step of this invocation still running in this process, so a cancelled step
  cannot prepare behind the cleanup's back. If it finds the commit already done, the invocation
  answers with the committed balance: that is what happened.
* The invocation is killed (``restate invocations kill``), or a zombie attempt prepares after
  the cleanup: no handler code runs any more, so the janitor (``dbpatterns.exactly_once.janitor``,
  run by the service and by ``./lab janitor``) rolls back prepared transactions whose invocation
  Restate reports completed or does not know. A call killed while an attempt was already sending
  its COMMIT PREPARED may still commit: the caller hears "killed", the row says what happened.
* Pool hygiene: the statements run on a pooled connection in autocommit mode, so
  BEGIN ... PREPARE TRANSACTION leaves it idle, as psycopg and its pool believe it is; any
  error rolls the open transaction back before the connection goes back to the pool (the
  TypeScript example leaks one connection per call).

Request/response deployments: supported. Nothing lives in the attempt between the steps (the
prepared transaction is in Postgres, its gid and xid in the journal), so an attempt that ends
after every step, as on a request/response deployment or with an inactivity timeout of 0, just
replays and carries on.
"""

from __future__ import annotations

import logging
from typing import Any

import restate

from dbpatterns.exactly_once import gids, prepared, prepared_transaction
from dbpatterns.patterns import users
from dbpatterns.patterns.models import Balance, Response, UpdateCredits
from dbpatterns.service import boundary, db, failpoints

log = logging.getLogger("dbpatterns.two_phase_commit")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

two_phase_commit = restate.Service("twoPhaseCommit")

failpoints.declare_library_points("twoPhaseCommit.update", prepared.POINTS)


class Committed(Response):
    """``{"committed": true, "credits": <balance after>, "transaction": <gid>}``"""

    committed: bool
    credits: int
    transaction: str


@two_phase_commit.handler(name="update", input_serde=boundary.JSON_INPUT)
async def update(ctx: restate.Context, payload: Any) -> Committed:
    """Add credits exactly once; survives a crash anywhere (see the module docstring)."""
    req = boundary.parse(UpdateCredits, payload)

    async def add_credits(conn: db.Connection) -> Balance:
        return await users.add_credits(conn, req.user_id, req.add_credits)

    done = await prepared_transaction(
        ctx,
        db.pool(),
        add_credits,
        result_type=Balance,
        prepare_step="add credits, PREPARE TRANSACTION",
    )
    gid = gids.gid_for(done.call_id)
    log.info("update %r +%d -> %d (%s)", req.user_id, req.add_credits, done.result.credits, gid)
    return Committed(committed=True, credits=done.result.credits, transaction=gid)
