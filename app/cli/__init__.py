"""The `selfinstruct` command: server processes, the HTTP client, and offline tools."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup


class _Group(TyperGroup):
    """The command group, whose unset flags (--help, --install-completion) default to False
    rather than None: typer coerces a None through a pydantic validator it builds on the spot,
    which would load pydantic for every `selfinstruct COMMAND --help`."""

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
        return params


cli = typer.Typer(
    cls=_Group,
    name="selfinstruct",
    help="Turn a handful of seed tasks into an instruction-tuning dataset (Self-Instruct).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help loads rich's markdown and traceback modules (0.15 s).
    rich_markup_mode=None,
)

# Each module adds its commands to `cli` on import.
from app.cli import client, dedupe, demo, keys, mix, server  # noqa: E402,F401


def main() -> None:
    cli()
