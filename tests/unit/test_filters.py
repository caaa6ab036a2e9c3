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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Name three primary colours.", None),  # four words are enough
        ("Name three colours.", InstructionReason.TOO_SHORT),
        ("Draw.", InstructionReason.TOO_SHORT),  # too short wins over the keyword
        ("", InstructionReason.TOO_SHORT),
        ("Describe the IMAGES. " * 60, InstructionReason.TOO_LONG),  # too long wins too
        ("Describe how a map-reduce job works.", InstructionReason.BLACKLISTED_KEYWORD),
        ("Write a program that draws a picture.", InstructionReason.BLACKLISTED_KEYWORD),
        ("write A PROGRAM to add two numbers.", InstructionReason.WRITE_A_PROGRAM),
        ("Write a programme for the school fair.", InstructionReason.WRITE_A_PROGRAM),  # a prefix
        ("Write a poem about a program crashing.", None),
        ("Tell me where to go tomorrow evening.", None),  # "go" alone is not "go to"
        ("Explain how photos are stored.", None),
        ('"Quote" a famous line about courage.', InstructionReason.STARTS_WITH_PUNCTUATION),
        ("¿Cómo se dice hello en inglés?", InstructionReason.STARTS_WITH_NON_ASCII),
        ("3 reasons why sleep matters, please.", None),
    ],
)
def test_instruction_filter_order_and_edges(text: str, reason: InstructionReason | None) -> None:
    assert reject(text) == reason


def test_word_limits_are_configurable() -> None:
    def rejection(text: str) -> InstructionReason | None:
        return instruction_rejection(text, min_words=2, max_words=3, keyword_blacklist=())

    assert rejection("Hi.") == InstructionReason.TOO_SHORT
    assert rejection("Say hi.") is None
    assert rejection("Say hi to everyone.") == InstructionReason.TOO_LONG


def test_custom_blacklist_with_symbols_and_phrases() -> None:
    blacklist = ["c++", "video", "look up"]

    def rejection(text: str) -> InstructionReason | None:
        return instruction_rejection(text, min_words=1, max_words=50, keyword_blacklist=blacklist)

    assert rejection("Explain pointers in C++ briefly.") == InstructionReason.BLACKLISTED_KEYWORD
    assert rejection("Summarize the VIDEO transcript.") == InstructionReason.BLACKLISTED_KEYWORD
    assert rejection("Look\tup the word in a dictionary.") == InstructionReason.BLACKLISTED_KEYWORD
    assert rejection("Summarize the videos transcript.") is None
    assert rejection("Explain pointers in C briefly.") is None


def test_instance_fault_order() -> None:
    assert reasons(
        [
            ParsedInstance("", ""),  # empty output before input == output
            ParsedInstance(" x ", "x"),  # compared after strip
            ParsedInstance("Sentence:", "Yes"),  # a cut-off input
            ParsedInstance("a", "b"),
            ParsedInstance("a ", " b"),  # a duplicate after strip
        ]
    ) == [
        InstanceReason.EMPTY_OUTPUT,
        InstanceReason.INPUT_EQUALS_OUTPUT,
        InstanceReason.CUT_OFF,
        None,
        InstanceReason.DUPLICATE,
    ]


def test_a_rejected_instance_neither_duplicates_nor_conflicts() -> None:
    assert reasons(
        [ParsedInstance("q", "Answer:"), ParsedInstance("q", "42"), ParsedInstance("q", "42")]
    ) == [InstanceReason.CUT_OFF, None, InstanceReason.DUPLICATE]


def test_truncated_last_instance_is_not_counted_as_a_conflict() -> None:
    assert reasons([ParsedInstance("x", "1"), ParsedInstance("x", "1 and")], truncated=True) == [
        None,
        InstanceReason.TRUNCATED,
    ]


def test_limit_counts_survivors_only() -> None:
    instances = [
        ParsedInstance("a", "1"),
        ParsedInstance("b", ""),
        ParsedInstance("c", "3"),
        ParsedInstance("d", "4"),
    ]
    assert reasons(instances, limit=2) == [
        None,
        InstanceReason.EMPTY_OUTPUT,
        None,
        InstanceReason.OVER_LIMIT,
    ]


def test_decisions_keep_the_instances() -> None:
    instances = [ParsedInstance("a", "1"), ParsedInstance("b", "")]
    decisions = filter_instances(instances, truncated=False, max_per_task=5)
    assert [d.instance for d in decisions] == instances
    assert [d.accepted for d in decisions] == [True, False]
    assert filter_instances([], truncated=True, max_per_task=5) == []
