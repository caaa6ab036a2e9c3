"""Run Alembic migrations from code, so `selfinstruct migrate` works from an installed package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import migrations


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    return config


def upgrade_database(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade, and return the schema revision before and after (None: no schema yet)."""
    before = current_revision(url)
    command.upgrade(alembic_config(url), revision)
    return before, current_revision(url)


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def describe_upgrade(before: str | None, after: str | None) -> str:
    """What `migrate` did, so a fresh database is not reported as merely "up to date"."""
    if before is None:
        return f"created the schema at revision {after}"
    if before != after:
        return f"upgraded the schema from revision {before} to {after}"
    return f"the schema is already up to date at revision {after}"
