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
# A "Task:" or "Task N:" label left at the start of an item, e.g. "10. Task: Sort the list."
_LEADING_TASK_LABEL = re.compile(r"(?i)^\s*task\s*\d{0,3}\s*[.:)]\s*")
# "Example 3", "Example 3:" or "Example 3." opening a line; "see example 2." inside a text is no split.
_EXAMPLE_SPLIT = re.compile(r"(?im)^[ \t]*example[ \t]*\d+\b[ \t]*[.:)]?")
_OUTPUT_LABEL = re.compile(r"(?i)\boutput[ \t]*\d*[ \t]*:")
# Only a line-opening "Input:" ends an output: the model ran on into another example.
_RUN_ON_INPUT = re.compile(r"(?im)^[ \t]*input[ \t]*\d*[ \t]*:")
_LEADING_INPUT_LABEL = re.compile(r"(?i)^\s*input[ \t]*\d*[ \t]*:")
_CLASS_LABEL = re.compile(r"(?i)class[ \t]+label[ \t]*:")
_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def parse_instruction_completion(text: str, *, first_number: int) -> list[str]:
    """Instructions continuing the prompt's numbered list.

    The text starts right after the prompt's last "N." (item `first_number`), so the first item
    has no number of its own; every later item starts on a new numbered line. Any number opens an
    item (models skip and repeat numbers), so `first_number` only documents where the list
    resumes; a restated first label ("9." or "Task 9:", as chat models write) is dropped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces = []
    previous_end = 0
    for match in _ITEM_START.finditer(text):
        pieces.append(text[previous_end : match.start()])
        previous_end = match.end()
    pieces.append(text[previous_end:])
    items = [_collapse(_LEADING_TASK_LABEL.sub("", piece, count=1)) for piece in pieces]
    return [item for item in items if item]


def parse_classification_answer(text: str) -> bool:
    """True when the answer's first word is yes (any case, any surrounding punctuation)."""
    return bool(_YES.match(text.strip()))


def _input_first_chunk(chunk: str) -> ParsedInstance:
    """'Input: x / Output: y'; an unlabelled chunk is all output (the task needs no input),
    while an input whose output never came keeps an empty output for the filters to reject."""
    output_match = _OUTPUT_LABEL.search(chunk)
    if output_match is None:
        if _LEADING_INPUT_LABEL.match(chunk):
            return ParsedInstance(input=_strip_input_label(chunk).strip(), output="")
        return ParsedInstance(input="", output=chunk.strip())
    raw_input = _strip_input_label(chunk[: output_match.start()])
    output = chunk[output_match.end() :]
    run_on = _RUN_ON_INPUT.search(output)
    if run_on is not None:
        output = output[: run_on.start()]
    return ParsedInstance(input=raw_input.strip(), output=output.strip())


def _strip_input_label(text: str) -> str:
    return _LEADING_INPUT_LABEL.sub("", text, count=1)


def _output_first_chunk(chunk: str) -> ParsedInstance:
    """The label is the rest of the "Class label:" line (maybe empty); the lines after it are
    the input. A specific field name ("Review:", "Sentence:") is kept, as the paper's data
    keeps it, since it says what the text is; a generic "Input:" says nothing and would be
    doubled by every training template that writes its own "Input:" label, so it is dropped."""
    label, _, rest = chunk.lstrip(" \t").partition("\n")
    return ParsedInstance(input=_strip_input_label(rest.strip()).strip(), output=label.strip())


def parse_instances(text: str, *, is_classification: bool) -> list[ParsedInstance]:
    """Instances from an instance-generation response, in order; only blank chunks are skipped,
    everything else (empty fields included) goes to the filters, which record why it fails."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if is_classification:
        chunks = _CLASS_LABEL.split(text)[1:]
        return [_output_first_chunk(c) for c in chunks if c.strip()]
    return [_input_first_chunk(c) for c in _EXAMPLE_SPLIT.split(text) if c.strip()]


def parse_inversion_completion(text: str) -> str | None:
    """The reverse task's instruction: the first line of the answer, if it looks like one. A
    numbered line ("2. ...") is the model running on into a list of other tasks, not an answer."""
    first = text.strip().split("\n", 1)[0].strip()
    first = re.sub(r"(?i)^reverse task\s*:\s*", "", first).strip()
    if len(first.split()) < 3 or first.lower().startswith("task:") or _ITEM_START.match(first):
        return None
    return first
