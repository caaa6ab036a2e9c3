"""Make raw model output safe to parse and to store, whatever the backend sent.

A model (or a broken server) can answer with NUL bytes, other control characters, lone UTF-16
surrogates (valid JSON escapes that no UTF-8 database accepts) or megabytes of runaway text.
Every completion passes through `clean_completion` before any parser sees it: control
characters go, surrogates become U+FFFD, and an answer far longer than its `max_tokens` could
produce is cut and marked oversized, so the steps reject it with a reason instead of crashing.
"""

from __future__ import annotations

import re

from app.selfinstruct.types import OVERSIZED_FINISH, Completion

# C0 control characters except tab, newline and carriage return (which parsers normalise).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

OVERSIZED = OVERSIZED_FINISH
# No tokenizer averages anywhere near this many characters per token on real text, so an
# answer beyond it is degenerate output (or a server ignoring max_tokens), not a long answer.
CHARS_PER_TOKEN_CAP = 16
MIN_CHAR_CAP = 8192
EXCERPT_CHARS = 200


def clean_text(text: str) -> str:
    """`text` without C0 control characters (tab, newline, CR kept) and with every surrogate
    code point replaced by U+FFFD: storable in PostgreSQL and encodable as UTF-8."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))


def completion_char_cap(max_tokens: int) -> int:
    """The longest answer worth parsing for a request of `max_tokens`."""
    return max(MIN_CHAR_CAP, CHARS_PER_TOKEN_CAP * max_tokens)


def clean_completion(text: str, finish_reason: str | None, *, max_chars: int) -> Completion:
    """The completion to parse: cleaned, and cut to `max_chars` (finish reason `oversized`)
    when longer."""
    cleaned = clean_text(text)
    if len(cleaned) > max_chars:
        return Completion(cleaned[:max_chars], OVERSIZED)
    return Completion(cleaned, finish_reason)


def excerpt(text: str) -> str:
    """The start of an oversized answer, kept with its rejection for inspection."""
    text = " ".join(text[: EXCERPT_CHARS * 4].split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
