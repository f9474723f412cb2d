"""Alembic environment: the database URL comes from the settings (``DBPATTERNS_DATABASE_URL``).

Migrations run on a plain synchronous psycopg 3 connection; the service uses the async one.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from dbpatterns.config import get_settings
from dbpatterns.service.schema import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    # An explicit URL (set by dbpatterns.service.migrate for a given database) wins over the
    # settings.
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    return get_settings().sqlalchemy_url.render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
