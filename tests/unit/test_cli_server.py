"""`selfinstruct migrate` says what it did to the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.migrate import alembic_config, current_revision

RUNNER = CliRunner()


def test_migrate_says_it_created_then_upgraded_then_found_the_schema_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        created = RUNNER.invoke(cli, ["migrate"])
        head = current_revision(url)
        assert created.exit_code == 0, created.output
        assert created.output.strip() == f"created the schema at revision {head}"
        command.downgrade(alembic_config(url), "-1")
        previous = current_revision(url)
        upgraded = RUNNER.invoke(cli, ["migrate"])
        assert upgraded.output.strip() == f"upgraded the schema from revision {previous} to {head}"
        again = RUNNER.invoke(cli, ["migrate"])
        assert again.output.strip() == f"the schema is already up to date at revision {head}"
    finally:
        get_settings.cache_clear()
