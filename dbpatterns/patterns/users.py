"""The ``users`` table as every lab service reads and writes it: one place for the statements
they share and for the 404 of an unknown user.

The patterns do not depend on each other: each takes what it needs from here, and the
exactly-once ones take their machinery from ``dbpatterns.exactly_once``.
"""

from __future__ import annotations

import restate

from dbpatterns.patterns.models import Balance
from dbpatterns.service import boundary, db

SELECT_BALANCE = "SELECT credits, version FROM users WHERE userid = %s"
#: Add credits, counting the write in ``version``: the one credit write of the lab.
ADD_CREDITS = """
    UPDATE users SET credits = credits + %(add)s, version = version + 1
    WHERE userid = %(user_id)s
    RETURNING credits, version
"""


def user_not_found(user_id: str) -> restate.TerminalError:
    return restate.TerminalError(
        f"user {user_id!r} not found; create it with simple/insert first", status_code=404
    )


async def fetch_balance(conn: db.Connection, user_id: str) -> Balance:
    """Credits and version of a user on ``conn``, or the 404."""
    row = await db.fetch_one(conn, SELECT_BALANCE, (user_id,))
    if row is None:
        raise user_not_found(user_id)
    credits, version = row
    return Balance(credits=credits, version=version)


async def read_balance(user_id: str) -> Balance:
    """Credits and version of a user now, or the 404. A plain SELECT, journaled by the caller
    if at all."""
    async with (
        boundary.database_errors(f"reading the credits of {user_id!r}"),
        db.connection() as conn,
    ):
        return await fetch_balance(conn, user_id)


async def add_credits(conn: db.Connection, user_id: str, add: int) -> Balance:
    """``credits += add`` and ``version += 1`` on ``conn``; the balance after, or the 404 (which,
    raised inside a transaction, rolls it back)."""
    row = await db.fetch_one(conn, ADD_CREDITS, {"add": add, "user_id": user_id})
    if row is None:
        raise user_not_found(user_id)
    credits, version = row
    return Balance(credits=credits, version=version)
