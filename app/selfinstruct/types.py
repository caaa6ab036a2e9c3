"""Plain data passed between the pure pipeline steps and the services around them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SeedInstance:
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class SeedTask:
    """One task of the Self-Instruct seed format (`id`, `name`, `instruction`, `instances`, ...)."""

    id: str
    name: str
    instruction: str
    instances: tuple[SeedInstance, ...]
    is_classification: bool
    source: Mapping[str, Any] | None = field(default=None, compare=False)


class InstructionReason(StrEnum):
    """Why a generated instruction was not accepted."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    BLACKLISTED_KEYWORD = "blacklisted_keyword"
    WRITE_A_PROGRAM = "write_a_program"
    STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
    STARTS_WITH_NON_ASCII = "starts_with_non_ascii"
    NEAR_DUPLICATE = "near_duplicate"
    TRUNCATED_RESPONSE = "truncated_response"
    OVER_TARGET = "over_target"
    INVALID_INSTANCE = "invalid_instance"  # batched mode: the task's own instance failed
    VERB_CAP = "verb_cap"  # balance.max_per_verb: its root verb has enough instructions
    JUDGE_DROPPED = "judge_dropped"  # the instruction judge said drop
    UNPARSEABLE = "unparseable"  # Unnatural-Instructions mode: no instruction/input/constraints
    OVERSIZED_RESPONSE = "oversized_response"  # the answer was far longer than max_tokens allows


# Candidates that passed every filter once the target was already met: surplus, not rejects.
# They are counted apart, so that they do not inflate rejection counts and rates.
SURPLUS_REASONS = frozenset({InstructionReason.OVER_TARGET.value})


class InstanceReason(StrEnum):
    """Why a generated instance was not accepted."""

    EMPTY_OUTPUT = "empty_output"
    INPUT_EQUALS_OUTPUT = "input_equals_output"
    CUT_OFF = "cut_off"
    CONFLICTING_OUTPUTS = "conflicting_outputs"
    DUPLICATE = "duplicate"
    TRUNCATED = "truncated"
    OVER_LIMIT = "over_limit"
    JUDGE_LOW_SCORE = "judge_low_score"  # the answer judge graded it below its threshold
    JUDGE_UNFAITHFUL = "judge_unfaithful"  # the faithfulness judge did
    OVERSIZED_RESPONSE = "oversized_response"  # the answer was far longer than max_tokens allows


# The finish reason of an answer cut at its character cap (app/selfinstruct/sanitize.py).
OVERSIZED_FINISH = "oversized"


@dataclass(frozen=True, slots=True)
class Completion:
    """What an LLM returned for one prompt: the text and why it stopped."""

    text: str
    finish_reason: str | None = "stop"

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def oversized(self) -> bool:
        """Cut at the sanitizer's cap: rejected as a whole rather than parsed."""
        return self.finish_reason == OVERSIZED_FINISH


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class InstanceDecision:
    instance: ParsedInstance
    reason: InstanceReason | None
    answer_score: int | None = None  # the judges' grades, when they ran
    faithfulness_score: int | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


class CoreFields(Protocol):
    """What an Unnatural-Instructions core carries besides its instruction."""

    @property
    def input(self) -> str: ...

    @property
    def constraints(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CandidateDecision:
    """The verdict on one generated instruction, with its nearest neighbour for inspection."""

    text: str
    prompt_index: int
    reason: InstructionReason | None
    max_rouge: float | None = None
    nearest: str | None = None
    instance: InstanceDecision | None = None  # batched mode: the instance written with it
    judge_note: str | None = None  # the instruction judge's reason, when it ran
    core: CoreFields | None = None  # Unnatural-Instructions mode: the core's input, constraints
    # Compared with the pool's first `pool_items` texts; max_rouge and nearest may come later.
    pool_items: int | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass(slots=True)
class RoundOutcome:
    decisions: list[CandidateDecision] = field(default_factory=list)

    @property
    def accepted(self) -> list[CandidateDecision]:
        return [d for d in self.decisions if d.accepted]
