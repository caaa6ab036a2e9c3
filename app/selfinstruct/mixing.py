"""Dataset mixing strategies from the instruction-tuning literature, as pure functions.

- examples-proportional mixing with a per-source cap K: a source contributes in proportion to
  min(n, K);
- temperature-scaled mixing: rates proportional to min(n, K)^(1/T) (T=1 is proportional, large T
  tends to uniform);
- fixed weights;
- a cap on examples per instruction, so no single task dominates;
- plain text mixed in at a ratio;
- two-stage schedules with a replay fraction of stage 1 in stage 2, optionally easy to hard;
- inversion: a task that goes the other way (given the output, produce the input), swapped in
  for the example it turns around.

Everything is deterministic under the `random.Random` it is given.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import characters
from app.selfinstruct.rounds import filter_instruction

T = TypeVar("T")
Record = dict[str, Any]


def mixing_rates(
    sizes: Mapping[str, int],
    *,
    cap: int | None = None,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Each source's share of the mixture (summing to 1)."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if weights is not None:
        raw = {name: max(0.0, float(weights.get(name, 0.0))) for name in sizes}
    else:
        raw = {
            name: (min(n, cap) if cap is not None else n) ** (1.0 / temperature)
            for name, n in sizes.items()
        }
    total = sum(raw.values())
    if total == 0:
        return {name: 0.0 for name in sizes}
    return {name: value / total for name, value in raw.items()}


def allocate(sizes: Mapping[str, int], rates: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts close to rate * total (largest remainder), never more than a source has;
    what a small source cannot give goes to the others in proportion to their rates."""
    counts = dict.fromkeys(sizes, 0)
    remaining = min(total, sum(sizes.values()))
    open_sources = {n for n in sizes if sizes[n] > 0 and rates.get(n, 0) > 0}
    while remaining > 0 and open_sources:
        share = sum(rates[n] for n in open_sources)
        wanted = {n: remaining * rates[n] / share for n in open_sources}
        floors = {n: min(math.floor(w), sizes[n] - counts[n]) for n, w in wanted.items()}
        given = sum(floors.values())
        by_remainder = sorted(open_sources, key=lambda n: (-(wanted[n] - floors[n]), n))
        for name in by_remainder:
            if given >= remaining:
                break
            if counts[name] + floors[name] < sizes[name]:
                floors[name] += 1
                given += 1
        for name, extra in floors.items():
            counts[name] += extra
        remaining -= given
        open_sources = {n for n in open_sources if counts[n] < sizes[n]}
        if given == 0:
            break
    return counts


def mix(
    sources: Mapping[str, Sequence[T]],
    rng: random.Random,
    *,
    total: int | None = None,
    cap: int | None = None,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> tuple[list[tuple[str, T]], dict[str, int]]:
    """Sample each source by its rate (without replacement), shuffle; returns the mixture with
    each item's source, and the counts per source. `total` defaults to the sum of min(n, cap)."""
    sizes = {name: len(items) for name, items in sources.items()}
    rates = mixing_rates(sizes, cap=cap, temperature=temperature, weights=weights)
    if total is None:
        total = sum(min(n, cap) if cap is not None else n for n in sizes.values())
    counts = allocate(sizes, rates, total)
    mixture = [
        (name, item)
        for name in sorted(sources)
        for item in rng.sample(list(sources[name]), counts[name])
    ]
    rng.shuffle(mixture)
    return mixture, counts


def cap_per_key(
    records: Sequence[T], key: Callable[[T], str], cap: int, rng: random.Random
) -> list[T]:
    """At most `cap` records per key (e.g. per instruction), chosen at random, order kept."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[key(record)].append(index)
    kept: set[int] = set()
    for indices in groups.values():
        kept.update(rng.sample(indices, cap) if len(indices) > cap else indices)
    return [r for i, r in enumerate(records) if i in kept]


def with_plain_text(
    records: Sequence[T], texts: Sequence[T], ratio: float, rng: random.Random
) -> list[T]:
    """Mix plain-text records in so they make up `ratio` of the result (as far as there are
    enough of them), shuffled."""
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1)")
    wanted = round(len(records) * ratio / (1 - ratio))
    mixed = [*records, *rng.sample(list(texts), min(wanted, len(texts)))]
    rng.shuffle(mixed)
    return mixed


def two_stages(
    stage1: Sequence[T],
    stage2: Sequence[T],
    replay_fraction: float,
    rng: random.Random,
    *,
    difficulty: Callable[[T], float] | None = None,
) -> tuple[list[T], list[T]]:
    """Stage 2 gets a replay of stage-1 examples making up `replay_fraction` of it, to keep what
    stage 1 taught. With `difficulty`, each stage is ordered easy to hard; else shuffled."""
    if not 0 <= replay_fraction < 1:
        raise ValueError("replay_fraction must be in [0, 1)")
    replayed = round(len(stage2) * replay_fraction / (1 - replay_fraction))
    first = list(stage1)
    second = [*stage2, *rng.sample(first, min(replayed, len(first)))]
    for stage in (first, second):
        if difficulty is not None:
            stage.sort(key=difficulty)
        else:
            rng.shuffle(stage)
    return first, second


INVERSION_TEMPLATES: tuple[str, ...] = (
    "Here is the answer to a task: write the input that it answers.\nTask: {instruction}",
    "Given the output of the following task, reconstruct a plausible input.\nTask: {instruction}",
    'Work backwards: the task was "{instruction}". Write an input that leads to the given output.',
)


def invert(example: Mapping[str, Any], rng: random.Random) -> Record | None:
    """Turn (instruction, input, output) into a task that produces the input from the output;
    None when there is no input to produce."""
    if not str(example.get("input") or "").strip():
        return None
    template = rng.choice(INVERSION_TEMPLATES)
    return {
        "instruction": template.format(instruction=example["instruction"]),
        "input": example["output"],
        "output": example["input"],
        "inverted": True,
        "inverted_from": example.get("id"),
    }


def inversion_count(chosen: int, fraction: float, cap: int | None) -> int:
    """How many of the `chosen` examples to turn around: `fraction` of them, at most `cap`."""
    wanted = round(chosen * fraction)
    return wanted if cap is None else min(wanted, cap)


def can_invert(example: Mapping[str, Any]) -> bool:
    """Only a task with an input has one to produce."""
    return bool(str(example.get("input") or "").strip())


# Words that relate any two English sentences, so they do not count as shared.
_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with and or but is are was be it its this that these "
    "those as into than then so if not no given each your you".split()
)


def inverse_rejection(written: str, instruction: str, options: GenerationOptions) -> str | None:
    """Why an LLM-written reverse instruction is not used (None: it is): the filters every
    generated instruction must pass (length, keywords, how it starts), and one word in common
    with the task it reverses; a reverse task names the same things ("question", "sentence"),
    while a sentence that shares none is the model writing about something else."""
    reason = filter_instruction(written, options)
    if reason is not None:
        return str(reason)
    own = set(characters(written)) - _FUNCTION_WORDS
    if not own & set(characters(instruction)):
        return "unrelated"
    return None


def difficulty_by_length(record: Mapping[str, Any]) -> float:
    """A simple easy-to-hard score: the length of the whole example in words."""
    return float(
        sum(len(str(record.get(f) or "").split()) for f in ("instruction", "input", "output"))
    )
