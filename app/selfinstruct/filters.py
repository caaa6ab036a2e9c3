"""The paper's filters: which generated instructions and instances are kept, and why not."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache

from app.selfinstruct.types import (
    InstanceDecision,
    InstanceReason,
    InstructionReason,
    ParsedInstance,
)


@lru_cache(maxsize=32)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive whole-word alternation; multi-word keywords match any spacing.

    Lookarounds rather than word boundaries keep keywords ending in a symbol ("c++") whole.
    """
    parts = [r"\s+".join(map(re.escape, k.split())) for k in keywords if k.strip()]
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def instruction_rejection(
    text: str,
    *,
    min_words: int,
    max_words: int,
    keyword_blacklist: Sequence[str],
    count_words: Callable[[str], int] = lambda text: len(text.split()),
    reject_non_ascii_start: bool = True,
) -> InstructionReason | None:
    """The first paper filter the instruction fails, or None when it passes them all."""
    words = count_words(text)
    if words < min_words:
        return InstructionReason.TOO_SHORT
    if words > max_words:
        return InstructionReason.TOO_LONG
    pattern = _keyword_pattern(tuple(keyword_blacklist))
    if pattern is not None and pattern.search(text):
        return InstructionReason.BLACKLISTED_KEYWORD
    if text.lower().startswith("write a program"):
        return InstructionReason.WRITE_A_PROGRAM
    first = text[0]
    if first in string.punctuation:
        return InstructionReason.STARTS_WITH_PUNCTUATION
    if reject_non_ascii_start and not first.isascii():
        return InstructionReason.STARTS_WITH_NON_ASCII
    return None


def _single_reason(instance: ParsedInstance) -> InstanceReason | None:
    """Faults of one instance on its own."""
    if not instance.output.strip():
        return InstanceReason.EMPTY_OUTPUT
    if instance.input.strip() == instance.output.strip():
        return InstanceReason.INPUT_EQUALS_OUTPUT
    if instance.input.strip().endswith(":") or instance.output.strip().endswith(":"):
        return InstanceReason.CUT_OFF
    return None


def filter_instances(
    instances: Sequence[ParsedInstance], *, truncated: bool, max_per_task: int
) -> list[InstanceDecision]:
    """One decision per parsed instance, in order.

    A task whose surviving instances give different outputs for the same non-empty input is
    unreliable as a whole, so all its survivors go (as in the paper's fine-tuning preparation).
    """
    reasons: list[InstanceReason | None] = []
    seen: set[tuple[str, str]] = set()
    for position, instance in enumerate(instances):
        if truncated and position == len(instances) - 1:
            reason: InstanceReason | None = InstanceReason.TRUNCATED
        else:
            reason = _single_reason(instance)
        key = (instance.input.strip(), instance.output.strip())
        if reason is None and key in seen:
            reason = InstanceReason.DUPLICATE
        if reason is None:
            seen.add(key)
        reasons.append(reason)

    outputs_by_input: dict[str, set[str]] = {}
    for inp, out in seen:
        if inp:
            outputs_by_input.setdefault(inp, set()).add(out)
    if any(len(outputs) > 1 for outputs in outputs_by_input.values()):
        reasons = [InstanceReason.CONFLICTING_OUTPUTS if r is None else r for r in reasons]

    kept = 0
    for position, reason in enumerate(reasons):
        if reason is None:
            kept += 1
            if kept > max_per_task:
                reasons[position] = InstanceReason.OVER_LIMIT
    return [InstanceDecision(i, r) for i, r in zip(instances, reasons, strict=True)]
