"""Balancing while generating: steer each round's prompts towards the job's target mix.

With domain seeds a job tends to drift to one kind of task (all classification, or no inputs),
and capping at export only throws work away. Instead each step-1 prompt shows seed tasks drawn
with weights, so the examples the model imitates carry the mix the job still needs:

- the desired share in the next prompts overshoots the target by the current error (a
  proportional controller): 30% classification so far against a 50% target asks for 70%;
- a seed's weight is desired share / share among the seeds, per attribute (classification,
  has an input), multiplied, so the expected composition of a prompt matches the desired one;
- a cap per root verb is a hard filter: a candidate whose verb already has `max_per_verb`
  accepted instructions is rejected in step 1 (reason `verb_cap`).

Machine instructions in the prompt stay uniformly sampled, as in the paper.

Steps 2 and 3 run in instance tasks on any worker, so at the time a round is planned they have
decided more or less of the earlier rounds. A round's weights therefore read the mix of a fixed
set of rounds, all of whose instructions steps 2 and 3 must have decided (the round waits for
them otherwise): what a balanced job asks for is the same however fast its instance tasks were,
and a rerun against a deterministic backend repeats it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from app.selfinstruct.options import BalanceTargets
from app.selfinstruct.types import SeedTask
from app.selfinstruct.verbs import verb_object

# Below this many known tasks the actual share is noise: the prompts aim at the target itself.
MIN_KNOWN = 10
_SHARE_FLOOR = 0.02  # never ask for none of a kind: the model would lose the pattern entirely


def steers_on_instances(balance: BalanceTargets | None) -> bool:
    """Whether the job's prompts are steered by what steps 2 and 3 decided (its shares): then
    its next round is better planned after the instance tasks already queued than before them."""
    return balance is not None and (
        balance.classification_share is not None or balance.input_share is not None
    )


# Round r is steered by rounds up to r - 2: their instance tasks ran while round r - 1 was out,
# so a round seldom waits for them (rounds up to r - 1 would make every round wait).
STEERING_LAG = 2


def steering_rounds(round_no: int) -> int:
    """The last round whose mix steers round `round_no` (0: none, the targets themselves)."""
    return max(0, round_no - STEERING_LAG)


@dataclass
class MixSoFar:
    """What a job has produced so far, as far as steps 2 and 3 have decided it."""

    classified: int = 0  # accepted instructions whose step 2 has answered
    classification: int = 0
    with_instances: int = 0  # accepted instructions whose instances are stored
    with_input: int = 0  # ... of which at least one accepted instance has an input
    verbs: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def share(part: int, known: int) -> float | None:
        return part / known if known else None


def root_verb(text: str) -> str | None:
    """The instruction's root verb by the dependency-free heuristic (see verbs.py)."""
    return verb_object(text)[0]


def count_verbs(texts: Iterable[str]) -> Counter[str]:
    return Counter(v for v in map(root_verb, texts) if v is not None)


def desired_share(target: float, part: int, known: int) -> float:
    """The share to ask for next: the target, plus the error so far once it means something."""
    if known < MIN_KNOWN:
        return target
    error = target - part / known
    return min(1 - _SHARE_FLOOR, max(_SHARE_FLOOR, target + error))


def has_input(seed: SeedTask) -> bool:
    return any(instance.input.strip() for instance in seed.instances)


def seed_weights(
    seeds: Sequence[SeedTask], targets: BalanceTargets, mix: MixSoFar
) -> list[float] | None:
    """Sampling weights for the seeds, or None when no share target is set."""
    factors: list[list[float]] = []
    if targets.classification_share is not None:
        want = desired_share(targets.classification_share, mix.classification, mix.classified)
        factors.append(_attribute_factors([s.is_classification for s in seeds], want))
    if targets.input_share is not None:
        want = desired_share(targets.input_share, mix.with_input, mix.with_instances)
        factors.append(_attribute_factors([has_input(s) for s in seeds], want))
    if not factors:
        return None
    return [math.prod(column) for column in zip(*factors, strict=True)]


def _attribute_factors(flags: Sequence[bool], want: float) -> list[float]:
    """Weights giving the flagged seeds `want` of the total (uniform when all or none are)."""
    flagged = sum(flags)
    if flagged in (0, len(flags)):
        return [1.0] * len(flags)
    have = flagged / len(flags)
    return [want / have if flag else (1 - want) / (1 - have) for flag in flags]


def over_verb_cap(text: str, verbs: Counter[str], cap: int | None) -> str | None:
    """The verb when accepting `text` would exceed the cap, else None."""
    if cap is None:
        return None
    verb = root_verb(text)
    return verb if verb is not None and verbs[verb] >= cap else None
