"""The names of the seed formats, apart from their parsers so the CLI can offer them as choices
without importing pydantic (`selfinstruct --help` stays quick)."""

from __future__ import annotations

from enum import StrEnum


class SeedFormat(StrEnum):
    SELF_INSTRUCT = "self_instruct"
    NATURAL_INSTRUCTIONS = "natural_instructions"
    ALPACA = "alpaca"
    LINES = "lines"
