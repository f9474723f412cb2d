"""The service's database engine: SQLAlchemy Core on the async psycopg 3 driver.

Every connection carries ``lock_timeout`` and ``idle_in_transaction_session_timeout`` so that a
stuck or zombie transaction cannot hold a row forever, and an ``application_name`` so the lab
(and a human in psql) can tell the service's sessions apart.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dbpatterns.config import Settings, get_settings

APPLICATION_NAME = "dbpatterns-service"

_engine: AsyncEngine | None = None


def create_engine(settings: Settings) -> AsyncEngine:
    options = (
        f"-c lock_timeout={settings.lock_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
    )
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_pre_ping=False,
        pool_timeout=10,
        connect_args={"application_name": APPLICATION_NAME, "options": options},
    )


def engine() -> AsyncEngine:
    """The process-wide engine, created on first use."""
    global _engine
    if _engine is None:
        _engine = create_engine(get_settings())
    return _engine


async def dispose() -> None:
    global _engine
    if _engine is not None:
        await _engine.dispose()
        _engine = None
