"""The token table of ``idempotent_transaction``: what each statement on it does, and how tokens
expire.

Guarantee: a token is never deleted while an attempt of its call could still commit, and each
token expires by its own TTL, whichever service wrote it and whatever TTL the others have.

* A call has a **deadline**, its start plus the TTL, journaled before its transaction runs. The
  transaction's last statement before COMMIT (``fence``) refuses to go on past the deadline, and
  bounds how long the session may then sit idle before its COMMIT arrives to the time left: an
  attempt frozen anywhere (a paused process, a node cut off) cannot commit after the deadline.
* A token **expires** one TTL after the deadline (``expires_at``, in its own row): until then a
  late retry still finds it and answers with the recorded result, or, if it finds none, knows
  for certain that no attempt committed. Expiry deletes only rows whose own ``expires_at`` has
  passed (on the database's clock, the one the fence reads too), so services with different
  TTLs share a table safely.
* The expiry is a private handler on the caller's service, scheduled (two TTLs later) before
  the transaction can run, so a call that ends, hangs or keeps failing after its commit still
  has its token expire. A kill through Restate kills that scheduled call with the invocation
  (restate-server 1.7, measured): every expiry therefore also deletes every other expired row.
  An expiry that finds its own token not yet expired (a clock ahead of the database's)
  schedules itself again for the time left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import restate
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import AwareDatetime, BaseModel

from dbpatterns.exactly_once._tables import COMMITTED, FAILED, TOKENS
from dbpatterns.exactly_once._types import Connection, Pool
from dbpatterns.exactly_once.calls import CALL_ID
from dbpatterns.exactly_once.errors import database_errors

log = logging.getLogger("dbpatterns.exactly_once.tokens")
log.addFilter(restate.RestateLoggingFilter())  # silent while Restate replays the journal

#: The session setting the fence lowers to the time left before the deadline.
IDLE_TIMEOUT = "idle_in_transaction_session_timeout"
#: What the fence sets that setting to past the deadline: not a number, so Postgres refuses it
#: (SQLSTATE 22023) and the transaction cannot go on to its COMMIT.
PAST_THE_DEADLINE = "dbpatterns: past the call's deadline"
#: The largest value Postgres takes for the setting (ms), about 24.8 days.
MAX_TIMEOUT_MS = 2_147_483_647

#: The last statement before COMMIT. Before the deadline it sets the session's idle timeout,
#: for the rest of this transaction, to the milliseconds left (at least 1; never more than the
#: setting already was, 0 meaning none), so a COMMIT that arrives after the deadline finds its
#: session gone. Past the deadline it fails, rolling the transaction back.
FENCE = sql.SQL("""
    SELECT set_config({setting},
        CASE WHEN clock_timestamp() < %(deadline)s
        THEN least(
            greatest(1, ceil(extract(epoch FROM %(deadline)s - clock_timestamp()) * 1000)),
            coalesce(nullif(setting::bigint, 0), {max_ms}), {max_ms})::bigint::text
        ELSE {past} END,
        true)
    FROM pg_settings WHERE name = {setting}
""").format(
    setting=sql.Literal(IDLE_TIMEOUT),
    past=sql.Literal(PAST_THE_DEADLINE),
    max_ms=sql.Literal(MAX_TIMEOUT_MS),
)


class Window(BaseModel):
    """A call's window, journaled when it starts: its work commits before ``deadline`` or never;
    its token is kept until ``expires_at``."""

    deadline: AwareDatetime
    expires_at: AwareDatetime


class Found(BaseModel):
    """A token that was already there: its call's ``outcome`` and the recorded ``result``."""

    outcome: str
    result: Any = None

    @property
    def committed(self) -> bool:
        return self.outcome == COMMITTED


class Expired(BaseModel):
    """An expiry's outcome: ``deleted`` (its own token), ``swept`` (other expired tokens) and
    ``live_until`` (its own token's expiry, when that is still ahead: it runs again then)."""

    deleted: bool
    swept: int
    live_until: AwareDatetime | None = None


class DeadlinePassed(restate.TerminalError):
    """The call's transaction reached its fence past the deadline: it rolled back."""


class IdempotencyTokens:
    """A token table, its TTL, and the private handler on the caller's service that expires
    tokens (registered here as ``expiry_handler``, reachable only from Restate).

    ``ttl``: a call commits its work within ``ttl`` of its start or not at all, and its token is
    kept for another ``ttl`` after that. ``pool`` is called when an expiry runs (the pool is
    usually opened after the service is defined)."""

    def __init__(
        self,
        service: restate.Service,
        *,
        pool: Callable[[], Pool],
        ttl: timedelta,
        table: str = TOKENS,
        expiry_handler: str = "expireIdempotencyKey",
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"the token TTL must be positive, not {ttl}")
        self.ttl = ttl
        self.table = table
        self._pool = pool
        name = sql.Identifier(table)
        self._claim = sql.SQL(
            "INSERT INTO {} (id, expires_at, outcome) VALUES (%s, %s, {}) "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        ).format(name, sql.Literal(COMMITTED))
        self._fail = sql.SQL(
            "INSERT INTO {} (id, expires_at, outcome) VALUES (%s, %s, {}) "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        ).format(name, sql.Literal(FAILED))
        self._record = sql.SQL("UPDATE {} SET result = %s WHERE id = %s").format(name)
        self._found = sql.SQL("SELECT outcome, result FROM {} WHERE id = %s").format(name)
        #: Every expired token (its own among them, once expired); its own expiry if still ahead.
        self._expire = sql.SQL(
            "WITH gone AS (DELETE FROM {table} WHERE expires_at <= now() RETURNING id) "
            "SELECT count(*) FILTER (WHERE id = %(token)s),"
            " count(*) FILTER (WHERE id <> %(token)s),"
            " (SELECT expires_at FROM {table} WHERE id = %(token)s AND expires_at > now()) "
            "FROM gone"
        ).format(table=name)
        self._expiry = service.handler(name=expiry_handler, ingress_private=True)(self._expire_call)

    # --- the call's side ---------------------------------------------------------------------

    def window(self, started: datetime) -> Window:
        """The window of a call that starts at ``started``."""
        deadline = started + self.ttl
        return Window(deadline=deadline, expires_at=deadline + self.ttl)

    def schedule_expiry(self, ctx: restate.Context | restate.ObjectContext, token: str) -> None:
        """Ask Restate to expire ``token`` two TTLs from now, around its ``expires_at``."""
        ctx.service_send(self._expiry, token, send_delay=2 * self.ttl)

    async def claim(self, conn: Connection, token: str, window: Window) -> bool:
        """Insert ``token`` as committed with its work; False if a row is there already (waits
        for a transaction inserting it to end)."""
        cur = await conn.execute(self._claim, (token, window.expires_at))
        return await cur.fetchone() is not None

    async def record(self, conn: Connection, token: str, result: Any) -> None:
        """Store a claimed token's result (JSON-ready Python data; ``None`` is JSON null)."""
        await conn.execute(self._record, (Jsonb(result), token))

    async def fence(self, conn: Connection, window: Window) -> None:
        """The last statement before COMMIT (see ``FENCE``); raises ``DeadlinePassed`` past the
        deadline (the transaction is then in error: leave it to roll back)."""
        try:
            await conn.execute(FENCE, {"deadline": window.deadline})
        except psycopg.errors.InvalidParameterValue as exc:
            if PAST_THE_DEADLINE not in str(exc):
                raise
            raise DeadlinePassed(
                f"the call's deadline ({window.deadline.isoformat()}: its start plus the token "
                f"TTL, {self.ttl}) passed before its transaction could commit; it rolled back, "
                "nothing was written: call again to do it",
                status_code=504,
            ) from None

    async def found(self, conn: Connection, token: str) -> Found:
        """The row of a token that was already there."""
        row = await (await conn.execute(self._found, (token,))).fetchone()
        if row is None:  # claim() found it, and it cannot expire while the call may commit
            raise restate.TerminalError(
                f"token {token} vanished from {self.table} while its call was running: was it "
                "deleted by hand?",
                status_code=500,
            )
        return Found(outcome=row[0], result=row[1])

    async def fail(self, conn: Connection, token: str, window: Window) -> Found | None:
        """Mark ``token``'s call as ended without its work, so that no attempt of it can commit
        any more. None if done; the row that was there (its work committed, or it was already
        marked failed) otherwise. Waits for an attempt that holds the token's row."""
        cur = await conn.execute(self._fail, (token, window.expires_at))
        if await cur.fetchone() is not None:
            return None
        return await self.found(conn, token)

    # --- the expiry ----------------------------------------------------------------------------

    async def _expire_call(self, ctx: restate.Context, token: str) -> Expired:
        """Forget a token once it has expired, and every other expired token. Private: deleting
        a live token early would let a late attempt of its call run the work again."""
        if not isinstance(token, str) or not CALL_ID.fullmatch(token):
            raise restate.TerminalError(
                f"not an idempotency token: {token!r} (expected <invocation id>:<16 hex digits>)",
                status_code=400,
            )

        async def delete_expired() -> Expired:
            async with database_errors(f"expiring token {token}"), self._pool().connection() as c:
                row = await (await c.execute(self._expire, {"token": token})).fetchone()
            mine, others, live_until = row if row is not None else (0, 0, None)
            return Expired(deleted=mine == 1, swept=others, live_until=live_until)

        # Journaled: a replay must answer what the first attempt found.
        expired = await ctx.run_typed(
            "delete expired tokens", delete_expired, restate.RunOptions(type_hint=Expired)
        )
        if expired.live_until is not None:
            # This clock runs ahead of the database's: come back when the token has expired.
            left = expired.live_until - datetime.now(expired.live_until.tzinfo)
            again = max(left, timedelta(0)) + timedelta(seconds=1)
            ctx.service_send(self._expiry, token, send_delay=again)
        log.info("token %s expiry: %s (invocation %s)", token, expired, ctx.request().id)
        return expired
