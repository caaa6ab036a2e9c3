"""Bounds for untrusted input: JSON nesting, checked before `json.loads` sees it, and lines.

`json.loads` recurses once per nesting level, so a line of 100,000 `[` exhausts the interpreter's
stack; pydantic and the JSON column's encoder recurse the same way later on. A linear scan of the
brackets (outside strings) rejects such input first, with a message that can name the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import UnionType
from typing import IO, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

# Deeper than anything a seed task, dataset record or request body needs (they use 3 to 6 levels),
# and far below any recursion limit of the parsers and encoders the value passes through.
MAX_JSON_DEPTH = 64

_UTF8_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 64 * 1024

# Escapes first, so an escaped quote inside a string never toggles the in-string state.
_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


class JSONTooDeep(ValueError):
    """JSON nested deeper than the limit."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested deeper than {max_depth} levels")


def exceeds_depth(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than `max_depth`; linear time, stops at
    the first level too many. Bytes are scanned as Latin-1: UTF-8 never uses ASCII bytes inside a
    multi-byte character, so the brackets and quotes are the same."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: too few brackets to nest that deep
    depth, in_string = 0, False
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` for untrusted text: raises JSONTooDeep before parsing anything too deep, and
    ValueError for NaN/Infinity (no database JSON column takes them) and over-long integers."""
    if exceeds_depth(text, max_depth):
        raise JSONTooDeep(max_depth)
    return json.loads(text, parse_constant=_reject_constant)


def iter_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based number, line without its ending) for each line of a binary stream, holding at
    most one line of `max_line_bytes` in memory; None for a longer line, whose rest is skipped.
    A UTF-8 byte order mark before the first line is dropped."""
    number = 0
    while raw := stream.readline(max_line_bytes + 2):
        number += 1
        if number == 1:
            raw = raw.removeprefix(_UTF8_BOM)
        complete = raw.endswith(b"\n")
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if len(line) <= max_line_bytes:
            yield number, line
            continue
        while not complete and (rest := stream.readline(_SKIP_CHUNK)):
            complete = rest.endswith(b"\n")
        yield number, None


class JsonNumbers(BaseModel):
    """A request model whose int and float fields take JSON numbers only. Pydantic's lax mode
    would also take true/false and numeric strings, which JSON Schema's integer and number do
    not allow; strict mode would refuse 3.0 for an integer, which JSON Schema allows. Checked
    before each field's own validation, so the fields' JSON schema stays as it is."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        numeric = field is not None and _numeric(field.annotation)
        allowed_none = value is None and field is not None and _optional(field.annotation)
        if numeric and not _is_number(value) and not allowed_none:
            raise PydanticCustomError("number_type", "Input should be a number")
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    kinds = [m for m in members if m is not type(None)] or [annotation]
    return all(k in (int, float) for k in kinds)


def _optional(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


def json_number(value: Any) -> Any:
    """The same check for numbers inside containers (e.g. a dict of weights)."""
    if not _is_number(value):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value
