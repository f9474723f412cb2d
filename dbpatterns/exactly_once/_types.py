"""The types the library's entry points share."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

#: The caller's pool: any psycopg 3 async pool, in autocommit mode or not.
Pool = AsyncConnectionPool[Any]
#: A connection from that pool, lent to the caller's function.
Connection = psycopg.AsyncConnection[Any]
