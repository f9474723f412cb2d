"""simple: a handler's database access done as any microservice would (placeholder)."""

from __future__ import annotations

from typing import Any

import restate
from sqlalchemy import select

from dbpatterns import db
from dbpatterns.schema import users

simple = restate.Service("simple")


@simple.handler()
async def read(ctx: restate.Context, user_id: str) -> dict[str, Any]:
    async with db.engine().connect() as conn:
        row = (await conn.execute(select(users).where(users.c.userid == user_id))).one_or_none()
    if row is None:
        raise restate.TerminalError(f"user {user_id!r} not found", status_code=404)
    return dict(row._mapping)
