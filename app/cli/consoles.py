"""The rich console the commands report on, created on first use: `--help` never loads rich."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@cache
def stderr_console() -> Console:
    """One stderr console per process; rich looks up sys.stderr on each write."""
    from rich.console import Console  # rich: imported when a command reports

    return Console(stderr=True)
