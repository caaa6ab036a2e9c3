"""Parse raw model output into instructions, a Yes/No verdict, and instances.

Real completions are messy: numbering gaps, "10 ." or "11)" numbering, "Task 9:" prefixes,
trailing half items, Windows newlines, labels in any case. Parsers here never raise; what they
cannot read becomes an empty or short item that the filters then reject with a reason.
"""

from __future__ import annotations

import re

from app.selfinstruct.types import ParsedInstance

_WHITESPACE = re.compile(r"\s+")
# A new item starts at a line beginning with a number, optionally "Task" before it, then one of
# ". ) :" (spaces allowed around), e.g. "10.", "10 .", "11)", "Task 12:".
_ITEM_START = re.compile(r"(?im)^[ \t]*(?:task[ \t]*)?\d{1,3}[ \t]*[.):](?=\s|$)")
# A stray "Task N:" label left at the start of the first (unnumbered) item.
_LEADING_TASK_LABEL = re.compile(r"(?i)^\s*task\s*\d{0,3}\s*[.:)]\s*")
_EXAMPLE_SPLIT = re.compile(
    r"(?im)^[ \t]*example[ \t]*\d+[ \t]*[.:]?[ \t]*$|\bexample[ \t]*\d+[ \t]*[.:]"
)
_OUTPUT_LABEL = re.compile(r"(?i)\boutput[ \t]*\d*[ \t]*:")
_INPUT_LABEL = re.compile(r"(?i)\binput[ \t]*\d*[ \t]*:")
_LEADING_INPUT_LABEL = re.compile(r"(?i)^\s*input[ \t]*\d*[ \t]*:")
_CLASS_LABEL = re.compile(r"(?i)class[ \t]+label[ \t]*:")
_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def parse_instruction_completion(text: str, *, first_number: int) -> list[str]:
    """Instructions continuing the prompt's numbered list.

    The text starts right after the prompt's last "N." (item `first_number`), so the first item
    has no number of its own; every later item starts on a new numbered line.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = [m for m in _ITEM_START.finditer(text)]
    pieces = []
    previous_end = 0
    for match in starts:
        pieces.append(text[previous_end : match.start()])
        previous_end = match.end()
    pieces.append(text[previous_end:])
    items = [_collapse(_LEADING_TASK_LABEL.sub("", piece, count=1)) for piece in pieces]
    return [item for item in items if item]


def parse_classification_answer(text: str) -> bool:
    """True when the answer's first word is yes (any case, any surrounding punctuation)."""
    return bool(_YES.match(text.strip()))


def _input_first_chunk(chunk: str) -> ParsedInstance:
    output_match = _OUTPUT_LABEL.search(chunk)
    if output_match is None:
        return ParsedInstance(input="", output=_strip_input_label(chunk).strip())
    raw_input = _strip_input_label(chunk[: output_match.start()])
    output = chunk[output_match.end() :]
    cut = _INPUT_LABEL.search(output)  # the model ran on into another example
    if cut is not None:
        output = output[: cut.start()]
    return ParsedInstance(input=raw_input.strip(), output=output.strip())


def _strip_input_label(text: str) -> str:
    return _LEADING_INPUT_LABEL.sub("", text, count=1)


def _output_first_chunk(chunk: str) -> ParsedInstance:
    label, _, rest = chunk.strip().partition("\n")
    return ParsedInstance(input=rest.strip(), output=label.strip())


def parse_instances(text: str, *, is_classification: bool) -> list[ParsedInstance]:
    """Instances from an instance-generation response, in order; nothing is dropped here."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if is_classification:
        chunks = _CLASS_LABEL.split(text)[1:]
        return [_output_first_chunk(c) for c in chunks if c.strip()]
    chunks = _EXAMPLE_SPLIT.split(text)
    if len(chunks) > 1 and not chunks[0].strip():
        chunks = chunks[1:]
    return [_input_first_chunk(c) for c in chunks if c.strip()]
