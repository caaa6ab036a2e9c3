"""The `selfinstruct` command: server processes, the HTTP client, and offline tools."""

from __future__ import annotations

import typer

cli = typer.Typer(
    name="selfinstruct",
    help="Turn a handful of seed tasks into an instruction-tuning dataset (Self-Instruct).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Each module adds its commands to `cli` on import.
from app.cli import client, dedupe, demo, keys, mix, server  # noqa: E402,F401


def main() -> None:
    cli()
