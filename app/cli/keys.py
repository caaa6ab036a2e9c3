"""`selfinstruct keys`: create, list and revoke API keys (runs against the database directly)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import cli

keys_cli = typer.Typer(help="API keys: create (the token is shown once), list, revoke.")
cli.add_typer(keys_cli, name="keys")


def _session():  # type: ignore[no-untyped-def]
    from app.config import get_settings
    from app.db import session_scope
    from app.migrate import upgrade_database

    upgrade_database(get_settings().resolved_database_url)
    return session_scope()


@keys_cli.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
) -> None:
    """Create a key and print its token once; only a hash is stored."""
    from app.services.keys import create_key

    with _session() as session:
        key, token = create_key(session, name)
        key_id = key.id
    typer.echo(token)
    typer.echo(f"key {key_id} ({name}) created; the token above is not shown again", err=True)


@keys_cli.command("list")
def list_() -> None:
    """List keys: id, name, token prefix, created, revoked."""
    from rich.console import Console  # rich: imported when a command prints a table
    from rich.table import Table

    from app.services.keys import list_keys

    table = Table("id", "name", "prefix", "created", "revoked")
    with _session() as session:
        for key in list_keys(session):
            revoked = key.revoked_at.isoformat()[:19] if key.revoked_at else ""
            table.add_row(
                str(key.id), key.name, key.prefix, key.created_at.isoformat()[:19], revoked
            )
    Console().print(table)


@keys_cli.command("revoke")
def revoke(key: Annotated[str, typer.Argument(help="The key's id or token prefix.")]) -> None:
    """Revoke a key: its requests get 401 from now on; its jobs keep running."""
    from app.errors import NotFound
    from app.services.keys import revoke_key

    try:
        with _session() as session:
            revoked = revoke_key(session, key)
            key_id = revoked.id
    except NotFound as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"key {key_id} revoked")
