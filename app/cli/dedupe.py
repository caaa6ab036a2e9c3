"""Placeholder; commands are added here."""

from __future__ import annotations

from app.cli import cli  # noqa: F401
