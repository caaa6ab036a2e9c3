"""The paper's instruction and instance filters, with their reason codes."""

from __future__ import annotations

import pytest

from app.selfinstruct.filters import filter_instances, instruction_rejection
from app.selfinstruct.options import PAPER_KEYWORD_BLACKLIST
from app.selfinstruct.types import InstanceReason, InstructionReason, ParsedInstance


def reject(text: str) -> InstructionReason | None:
    return instruction_rejection(
        text, min_words=4, max_words=150, keyword_blacklist=PAPER_KEYWORD_BLACKLIST
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sort these numbers.", InstructionReason.TOO_SHORT),
        ("word " * 151, InstructionReason.TOO_LONG),
        ("Describe the image in one sentence.", InstructionReason.BLACKLISTED_KEYWORD),
        ("Please GO   TO the store and report.", InstructionReason.BLACKLISTED_KEYWORD),
        ("Plot the data as a bar chart.", InstructionReason.BLACKLISTED_KEYWORD),
        ("Write a program that prints primes.", InstructionReason.WRITE_A_PROGRAM),
        ("- List three kinds of trees.", InstructionReason.STARTS_WITH_PUNCTUATION),
        ("Écrivez un poème sur la mer.", InstructionReason.STARTS_WITH_NON_ASCII),
        ("Sort these four numbers please.", None),
        ("Explain the difference between a mapping and a list.", None),  # "mapping" is not "map"
        ("Describe your profile in three words.", None),  # "profile" is not "file"
    ],
)
def test_instruction_filters(text: str, reason: InstructionReason | None) -> None:
    assert reject(text) == reason


def test_empty_blacklist() -> None:
    assert (
        instruction_rejection(
            "Draw a map of a city.", min_words=2, max_words=10, keyword_blacklist=[]
        )
        is None
    )


def reasons(
    instances: list[ParsedInstance], truncated: bool = False, limit: int = 5
) -> list[InstanceReason | None]:
    return [d.reason for d in filter_instances(instances, truncated=truncated, max_per_task=limit)]


def test_instance_faults() -> None:
    assert reasons(
        [
            ParsedInstance("a", "b"),
            ParsedInstance("c", ""),
            ParsedInstance("same", "same"),
            ParsedInstance("d", "Answer:"),
            ParsedInstance("a", "b"),
        ]
    ) == [
        None,
        InstanceReason.EMPTY_OUTPUT,
        InstanceReason.INPUT_EQUALS_OUTPUT,
        InstanceReason.CUT_OFF,
        InstanceReason.DUPLICATE,
    ]


def test_truncated_drops_the_last() -> None:
    assert reasons([ParsedInstance("a", "b"), ParsedInstance("c", "d")], truncated=True) == [
        None,
        InstanceReason.TRUNCATED,
    ]


def test_conflicting_outputs_drop_the_task() -> None:
    assert reasons(
        [
            ParsedInstance("x", "1"),
            ParsedInstance("y", "2"),
            ParsedInstance("x", "3"),
            ParsedInstance("z", ""),
        ]
    ) == [
        InstanceReason.CONFLICTING_OUTPUTS,
        InstanceReason.CONFLICTING_OUTPUTS,
        InstanceReason.CONFLICTING_OUTPUTS,
        InstanceReason.EMPTY_OUTPUT,
    ]


def test_empty_inputs_never_conflict_and_limit_applies() -> None:
    many = [ParsedInstance("", f"output {i}") for i in range(7)]
    assert reasons(many) == [None] * 5 + [InstanceReason.OVER_LIMIT] * 2
