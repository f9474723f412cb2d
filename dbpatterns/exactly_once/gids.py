"""The names and statements of prepared transactions, as ``prepared_transaction`` and a janitor
both use them.

A prepared transaction's name (its gid) is ``<prefix><call id>``: the prefix says it is this
library's (and which service's, if it chose one), the call id (``calls``) names the invocation
and the call within it. PREPARE TRANSACTION and its friends take the gid as a literal, not a
bind parameter, so it is quoted with ``psycopg.sql.Literal``, and built only from a prefix the
service chose and a call id that matched a strict pattern: nothing a caller sends reaches it.
"""

from __future__ import annotations

import re

from psycopg import sql

from dbpatterns.exactly_once._tables import PREPARED_RESULTS
from dbpatterns.exactly_once.calls import CALL_ID, INVOCATION_ID

#: Every gid of this library starts so, unless the service chose its own prefix.
GID_PREFIX = "dbpatterns-2pc:"
#: Postgres keeps at most this many bytes of a gid (GIDSIZE 200, with its terminating NUL).
MAX_GID_BYTES = 199
#: A prefix: letters, digits and ``_ . : -``, so a gid needs no more than plain quoting.
PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def gid_for(call_id: str, prefix: str = GID_PREFIX) -> str:
    """The prepared transaction's name for a call (``calls.new_call_id``)."""
    if not PREFIX.fullmatch(prefix):
        raise ValueError(f"a gid prefix is 1-64 letters, digits or _ . : -, not {prefix!r}")
    if not CALL_ID.fullmatch(call_id):
        raise ValueError(f"not a call id (<invocation id>:<16 hex digits>): {call_id!r}")
    gid = prefix + call_id
    if len(gid.encode()) > MAX_GID_BYTES:
        raise ValueError(f"the gid {gid!r} is longer than Postgres keeps ({MAX_GID_BYTES} bytes)")
    return gid


def invocation_of(gid: str, prefix: str = GID_PREFIX) -> str | None:
    """The invocation id inside one of our gids; None for any other gid.

    Also reads gids named after the invocation alone (``<prefix><invocation id>``), as an
    earlier version of this library named them, so a janitor still finishes those."""
    if not gid.startswith(prefix):
        return None
    rest = gid.removeprefix(prefix)
    call = CALL_ID.fullmatch(rest)
    if call is not None:
        return call["invocation"]
    return rest if INVOCATION_ID.fullmatch(rest) else None


def rollback_prepared(gid: str) -> sql.Composed:
    """``ROLLBACK PREPARED gid``, as the clean-up step and a janitor both run it. Postgres takes
    no bind parameter there, so the gid is quoted as a literal."""
    return sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid))


def sweep_prepared_results(table: str = PREPARED_RESULTS) -> sql.Composed:
    """DELETE the result rows older than the interval given as the one parameter."""
    return sql.SQL("DELETE FROM {} WHERE created_at < now() - %s").format(sql.Identifier(table))


def widen_xid(xid: int, near: int) -> int:
    """The 64-bit id (``xid8``, as ``pg_current_xact_id()`` gives it and ``pg_xact_status``
    takes it) of a transaction known by its 32-bit ``xid``, e.g. from ``pg_prepared_xacts``.

    ``near`` is a current 64-bit id: ``pg_snapshot_xmax`` of a current snapshot, which is one
    past the latest *completed* transaction, so a transaction still in progress (a prepared one)
    may be at or even after it. Postgres keeps every live transaction within 2^31 ids of the
    current one (wraparound protection), so the answer is the id with these low 32 bits that
    lies within 2^31 of ``near``: in its epoch (the high 32 bits), the one before or the one
    after.
    """
    if not 0 <= xid < 1 << 32:
        raise ValueError(f"not a 32-bit transaction id: {xid}")
    wide = (near & ~0xFFFF_FFFF) | xid
    if wide > near + (1 << 31):
        wide -= 1 << 32
    elif wide < near - (1 << 31):
        wide += 1 << 32
    if wide < 0:
        raise ValueError(f"transaction id {xid} cannot be near {near}")
    return wide
