"""Which instructions a step-1 prompt shows: the paper's mix of seed and machine instructions."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

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
    seed_weights: Sequence[float] | None = None,
) -> list[str]:
    """`machine` instructions from the machine pool (fewer while it is small), the rest from the
    seeds (in proportion to `seed_weights` when given), all without replacement, shuffled so the
    model sees no fixed order.

    random.sample picks k items without copying the pool, so a large machine pool stays cheap.
    """
    machine_count = min(machine, total, len(machine_instructions))
    from_machine = rng.sample(machine_instructions, machine_count)
    seed_count = min(total - machine_count, len(seed_instructions))
    if seed_weights is None:
        from_seeds = rng.sample(seed_instructions, seed_count)
    else:
        from_seeds = weighted_sample(seed_instructions, seed_weights, seed_count, rng)
    shown = from_machine + from_seeds
    rng.shuffle(shown)
    return shown


def weighted_sample(
    items: Sequence[T], weights: Sequence[float], k: int, rng: random.Random
) -> list[T]:
    """k items without replacement, each drawn in proportion to its weight (Efraimidis and
    Spirakis: the k largest u ** (1 / w)); zero weights come last."""
    keyed = [
        (rng.random() ** (1 / w) if w > 0 else -1.0, position) for position, w in enumerate(weights)
    ]
    keyed.sort(reverse=True)
    return [items[position] for _, position in keyed[:k]]
