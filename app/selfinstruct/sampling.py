"""Which instructions a step-1 prompt shows: the paper's mix of seed and machine instructions."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

_WHITESPACE = re.compile(r"\s+")


def normalize_instruction(text: str) -> str:
    """Collapse whitespace and drop one trailing colon, as the paper does before numbering."""
    text = _WHITESPACE.sub(" ", text).strip()
    return text[:-1].rstrip() if text.endswith(":") else text


def sample_prompt_instructions(
    seed_instructions: Sequence[str],
    machine_instructions: Sequence[str],
    rng: random.Random,
    *,
    total: int,
    machine: int,
) -> list[str]:
    """`machine` instructions from the machine pool (fewer while it is small), the rest from the
    seeds, all without replacement, shuffled so the model sees no fixed order.

    random.sample picks k items without copying the pool, so a large machine pool stays cheap.
    """
    machine_count = min(machine, total, len(machine_instructions))
    from_machine = rng.sample(machine_instructions, machine_count)
    seed_count = min(total - machine_count, len(seed_instructions))
    shown = from_machine + rng.sample(seed_instructions, seed_count)
    rng.shuffle(shown)
    return shown
