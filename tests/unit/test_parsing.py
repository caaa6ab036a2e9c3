"""Parsers on the messy output real models produce."""

from __future__ import annotations

import pytest

from app.selfinstruct.parsing import (
    parse_classification_answer,
    parse_instances,
    parse_instruction_completion,
)
from app.selfinstruct.types import ParsedInstance


def test_continuation_of_numbered_list() -> None:
    text = " Give three tips for a job interview.\n10. Translate the sentence to French.\n11. Sort the numbers in ascending order."
    assert parse_instruction_completion(text, first_number=9) == [
        "Give three tips for a job interview.",
        "Translate the sentence to French.",
        "Sort the numbers in ascending order.",
    ]


@pytest.mark.parametrize(
    "text",
    [
        " Alpha task here.\n10 . Beta task here.\n13. Gamma task here.",  # spacing and a gap
        " Alpha task here.\r\n10) Beta task here.\r\n11: Gamma task here.",  # Windows newlines
        "Task 9: Alpha task here.\nTask 10: Beta task here.\n11. Gamma task here.\n12.",  # labels, partial
        "\n  Alpha   task\there.\n\n10.   Beta task here.\n11. Gamma task here.\n12. ",
    ],
)
def test_messy_numbering(text: str) -> None:
    assert parse_instruction_completion(text, first_number=9) == [
        "Alpha task here.",
        "Beta task here.",
        "Gamma task here.",
    ]


def test_numbers_inside_an_item_do_not_split_it() -> None:
    text = " Add 3.5 and 4.\n10. List 5 fruits: apple, pear."
    assert parse_instruction_completion(text, first_number=9) == [
        "Add 3.5 and 4.",
        "List 5 fruits: apple, pear.",
    ]


def test_empty_completion() -> None:
    assert parse_instruction_completion("", first_number=9) == []
    assert parse_instruction_completion("\n\n10.\n", first_number=9) == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" Yes", True),
        ("yes.", True),
        ("YES", True),
        ("\nYes, it is", True),
        (" No", False),
        ("", False),
        ("Yesterday", False),
        ("Maybe", False),
    ],
)
def test_classification_answer(answer: str, expected: bool) -> None:
    assert parse_classification_answer(answer) is expected


def test_input_first_examples() -> None:
    text = "Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nInput: 3 * 3\nOutput: 9\n"
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("2 + 2", "4"),
        ParsedInstance("3 * 3", "9"),
    ]


def test_output_only_and_blank_output() -> None:
    assert parse_instances("Output: A calm lake at dawn.\n\n", is_classification=False) == [
        ParsedInstance("", "A calm lake at dawn.")
    ]
    assert parse_instances("Example 1\nInput: hello\nOutput:\n", is_classification=False) == [
        ParsedInstance("hello", "")
    ]


def test_output_running_into_another_input_is_cut() -> None:
    text = "Input: cat\nOutput: animal\nInput: rose\nOutput: plant"
    assert parse_instances(text, is_classification=False) == [ParsedInstance("cat", "animal")]


def test_no_labels_at_all_is_one_output() -> None:
    assert parse_instances("Just some text.", is_classification=False) == [
        ParsedInstance("", "Just some text.")
    ]


def test_output_first() -> None:
    text = (
        "Class label: Positive\nReview: Loved it.\nClass label: Negative\nReview: Broke at once.\n"
    )
    assert parse_instances(text, is_classification=True) == [
        ParsedInstance("Review: Loved it.", "Positive"),
        ParsedInstance("Review: Broke at once.", "Negative"),
    ]


def test_output_first_labels_only() -> None:
    assert parse_instances("Class label: Yes\nClass label: No", is_classification=True) == [
        ParsedInstance("", "Yes"),
        ParsedInstance("", "No"),
    ]
