"""``prepared_transaction``'s commit step, against the database alone: the result row, which
commits exactly with the prepared transaction, is the witness of a commit, whatever
``pg_xact_status`` would say of the journaled transaction id (forgotten, or never issued by this
database: 22023)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
import restate
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from dbpatterns.exactly_once.gids import gid_for
from dbpatterns.exactly_once.prepared import Prepared, _Transaction
from dbpatterns.exactly_once.schema import PREPARED_RESULTS
from tests.exactly_once.conftest import FakeContext

#: A 64-bit transaction id far beyond anything this database has issued.
NEVER_ISSUED = (7 << 32) + 12345


def new_gid() -> tuple[str, str]:
    call_id = f"inv_1{uuid.uuid4().hex[:20]}:{uuid.uuid4().hex[:16]}"
    return call_id, gid_for(call_id)


def commit(database_url: str, call_id: str, gid: str, prepared: Prepared) -> Any:
    async def run() -> Any:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
            tx = _Transaction(FakeContext(), pool, call_id, gid, PREPARED_RESULTS)  # type: ignore[arg-type]
            return (await tx.commit(prepared)).result

    return asyncio.run(run())


def test_a_result_row_without_its_prepared_transaction_is_a_commit_whatever_the_xid(
    database_url: str, db: psycopg.Connection[Any], no_hook: None
) -> None:
    """The journaled xid was never issued here (a restored database): pg_xact_status would fail
    with 22023. The result row says the work committed: the step answers with it."""
    call_id, gid = new_gid()
    db.execute(
        sql.SQL("INSERT INTO {} (gid, result) VALUES (%s, %s)").format(
            sql.Identifier(PREPARED_RESULTS)
        ),
        (gid, Jsonb({"credits": 7})),
    )
    prepared = Prepared(gid=gid, xid=NEVER_ISSUED, ran=False)
    assert commit(database_url, call_id, gid, prepared) == {"credits": 7}


def test_a_prepared_transaction_gone_without_its_result_row_is_not_applied_and_says_so(
    database_url: str, no_hook: None
) -> None:
    call_id, gid = new_gid()
    prepared = Prepared(gid=gid, xid=NEVER_ISSUED, ran=True, result={"credits": 7})
    with pytest.raises(restate.TerminalError) as refused:
        commit(database_url, call_id, gid, prepared)
    assert refused.value.status_code == 500
    assert "did NOT happen" in refused.value.message
    assert "unknown to this database" in refused.value.message


def test_a_commit_of_our_prepared_transaction_answers_its_journaled_result(
    database_url: str, db: psycopg.Connection[Any], no_hook: None
) -> None:
    call_id, gid = new_gid()
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("BEGIN")
        row = other.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        other.execute(
            sql.SQL("INSERT INTO {} (gid, result) VALUES (%s, %s)").format(
                sql.Identifier(PREPARED_RESULTS)
            ),
            (gid, Jsonb(None)),
        )
        other.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    prepared = Prepared(gid=gid, xid=int(row[0]), ran=True, result=None)
    assert commit(database_url, call_id, gid, prepared) is None
    left = db.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone()
    assert left == (0,)
    (witness,) = db.execute(
        sql.SQL("SELECT jsonb_typeof(result) FROM {} WHERE gid = %s").format(
            sql.Identifier(PREPARED_RESULTS)
        ),
        (gid,),
    ).fetchall()
    assert witness == ("null",)
