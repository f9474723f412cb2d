"""Schema and seed: ``alembic upgrade head``, then the seed rows from ``db/seed.sql``."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

from dbpatterns.config import PROJECT_ROOT, get_settings

SEED_FILE = PROJECT_ROOT / "db" / "seed.sql"


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's config from pyproject.toml, aimed at ``database_url`` (default: the settings)."""
    cfg = Config(toml_file=str(PROJECT_ROOT / "pyproject.toml"))
    if database_url is not None:
        cfg.attributes["database_url"] = _sqlalchemy_url(database_url)
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def seed(database_url: str | None = None, seed_file: Path = SEED_FILE) -> None:
    """Apply the seed rows; existing rows are left as they are."""
    url = database_url or get_settings().libpq_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(seed_file.read_text())


def migrate(database_url: str | None = None) -> None:
    """Bring a database to the current schema and make sure the seed rows exist."""
    upgrade(database_url)
    seed(database_url)


def _sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg{sep}{rest}" if scheme in ("postgresql", "postgres") else url
