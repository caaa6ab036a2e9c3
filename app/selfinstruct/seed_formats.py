"""Other seed formats, converted to Self-Instruct seed lines before the usual validation.

- natural_instructions: a Natural Instructions / Super-NaturalInstructions task file (one JSON
  object, or JSONL of them): Definition -> instruction, Positive Examples -> instances; the
  negative examples, explanations, categories and Instance License are kept in the task's
  `source`.
- alpaca: a JSON array (or JSONL) of {instruction, input, output}: one task per record.
- lines: plain text, one instruction per line.

Conversion keeps one output line per input record, so a validation error's line number is the
record's position (1-based) in the upload.
"""

from __future__ import annotations

import json
from typing import Any

from app.selfinstruct.seed_format_names import SeedFormat
from app.selfinstruct.seeds import MAX_INSTANCES_PER_SEED, SeedError, SeedFileError
from app.selfinstruct.untrusted import MAX_JSON_DEPTH, JSONTooDeep, loads_bounded

FORMAT_NAMES = {
    SeedFormat.SELF_INSTRUCT: "Self-Instruct seed JSONL",
    SeedFormat.NATURAL_INSTRUCTIONS: "a Natural Instructions task file",
    SeedFormat.ALPACA: "Alpaca JSON records",
    SeedFormat.LINES: "plain text with one instruction per line",
}

# NI category names that mean a finite label set.
_CLASSIFICATION_CATEGORIES = ("classification", "categorization", "detection", "sentiment")


def to_seed_jsonl(data: bytes, fmt: SeedFormat) -> bytes:
    """The upload as Self-Instruct seed JSONL; raises SeedFileError for unreadable input."""
    if fmt == SeedFormat.SELF_INSTRUCT:
        return data
    text = _decode(data)
    if fmt == SeedFormat.LINES:
        lines = [line.strip() for line in text.splitlines()]
        return _jsonl({"instruction": line} if line else None for line in lines)
    records = _records(text)
    convert = _from_natural_instructions if fmt == SeedFormat.NATURAL_INSTRUCTIONS else _from_alpaca
    return _jsonl(convert(r, n) for n, r in enumerate(records, start=1))


_NI_KEYS = ("Definition", "Positive Examples", "Instances")


def guess_format(data: bytes) -> SeedFormat | None:
    """The non-default format an upload looks like, so a failed Self-Instruct parse can say
    which `format` to pass; None when it looks like none of them (or like Self-Instruct)."""
    try:
        text = _decode(data)
    except SeedFileError:
        return None
    try:
        whole = loads_bounded(text)
    except ValueError:  # JSONTooDeep included: not one readable document, try the first line
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            whole = loads_bounded(first)
        except ValueError:
            return SeedFormat.LINES if first and not first.lstrip().startswith(("{", "[")) else None
    record = whole[0] if isinstance(whole, list) and whole else whole
    if not isinstance(record, dict):
        return None
    if "Definition" in record and any(key in record for key in _NI_KEYS[1:]):
        return SeedFormat.NATURAL_INSTRUCTIONS
    if "instruction" in record and "output" in record and "instances" not in record:
        return SeedFormat.ALPACA
    return None


def _decode(data: bytes) -> str:
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SeedFileError(
            [SeedError(None, None, f"invalid UTF-8 at byte {exc.start + 1}")]
        ) from exc


def _records(text: str) -> list[Any]:
    """One JSON document (an object, or an array of them) or JSONL; nesting is bounded before
    anything is parsed (see untrusted.py)."""
    try:
        whole = loads_bounded(text)
    except JSONTooDeep:
        too_deep = True
    except ValueError:
        too_deep = False
    else:
        return whole if isinstance(whole, list) else [whole]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads_bounded(line))
        except JSONTooDeep as exc:
            raise SeedFileError([SeedError(number, None, f"invalid JSON: {exc}")]) from exc
        except ValueError as exc:
            if too_deep:  # one document over several lines: no single line is to blame
                message = str(JSONTooDeep(MAX_JSON_DEPTH))
                raise SeedFileError([SeedError(None, None, f"invalid JSON: {message}")]) from exc
            raise SeedFileError([SeedError(number, None, f"invalid JSON: {_why(exc)}")]) from exc
    return records


def _why(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)  # NaN/Infinity or an over-long integer


def _jsonl(records: Any) -> bytes:
    return "".join(
        (json.dumps(r, ensure_ascii=False) if r is not None else "") + "\n" for r in records
    ).encode()


def _require_object(record: Any, number: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise SeedFileError([SeedError(number, None, "expected a JSON object")])
    return record


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    """A field that should hold a list; anything else (a number, a string) counts as none."""
    return value if isinstance(value, list) else []


def _from_alpaca(record: Any, number: int) -> dict[str, Any]:
    item = _require_object(record, number)
    task: dict[str, Any] = {"instruction": item.get("instruction")}
    if "output" in item:
        task["instances"] = [{"input": item.get("input") or "", "output": item.get("output")}]
    return task


def _from_natural_instructions(record: Any, number: int) -> dict[str, Any]:
    item = _require_object(record, number)
    if "Definition" not in item:
        raise SeedFileError(
            [SeedError(number, "Definition", "missing (not a Natural Instructions task)")]
        )
    positives = [e for e in _list(item.get("Positive Examples")) if isinstance(e, dict)]
    categories = [str(c) for c in _list(item.get("Categories"))]
    task: dict[str, Any] = {
        "instruction": _text(item["Definition"]).strip(),
        "instances": [
            {"input": _text(e.get("input")), "output": _text(e.get("output"))}
            for e in positives[:MAX_INSTANCES_PER_SEED]
        ],
        "is_classification": any(
            word in c.lower() for c in categories for word in _CLASSIFICATION_CATEGORIES
        ),
        "source": {
            "format": "natural_instructions",
            "categories": categories,
            "explanations": [_text(e.get("explanation")) for e in positives],
            "negative_examples": [
                e for e in _list(item.get("Negative Examples")) if isinstance(e, dict)
            ],
        },
    }
    if licenses := [str(name)[:200] for name in _list(item.get("Instance License"))][:10]:
        task["source"]["license"] = licenses  # Super-NaturalInstructions states one per task
    if isinstance(item.get("name"), str):
        task["name"] = item["name"][:200]
    return task
