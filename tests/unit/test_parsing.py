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


def test_chat_style_restated_first_number() -> None:
    text = "9. Alpha task here.\n10. Beta task here."
    assert parse_instruction_completion(text, first_number=9) == [
        "Alpha task here.",
        "Beta task here.",
    ]


def test_case_is_kept_and_inner_colons_survive() -> None:
    text = " classify the tweet as POSITIVE or negative:\n10. Convert 10:30 pm to 24-hour time."
    assert parse_instruction_completion(text, first_number=9) == [
        "classify the tweet as POSITIVE or negative:",
        "Convert 10:30 pm to 24-hour time.",
    ]


def test_multi_line_item_is_joined() -> None:
    text = " Rewrite the sentence\n   in the passive voice.\n10. Name a river in Asia."
    assert parse_instruction_completion(text, first_number=9) == [
        "Rewrite the sentence in the passive voice.",
        "Name a river in Asia.",
    ]


def test_numbered_examples_with_labels_and_windows_newlines() -> None:
    text = (
        "Example 1:\r\nInput: The cat sat.\r\nOutput: Le chat s'est assis.\r\n"
        "Example 2.\r\nInput 2: Good night.\r\nOutput 2: Bonne nuit.\r\n"
    )
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("The cat sat.", "Le chat s'est assis."),
        ParsedInstance("Good night.", "Bonne nuit."),
    ]


def test_leading_text_before_the_first_example_is_an_instance() -> None:
    text = "Output: A first answer.\nExample 2\nInput: q\nOutput: a"
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("", "A first answer."),
        ParsedInstance("q", "a"),
    ]


def test_mentioning_an_example_inside_an_output_does_not_split() -> None:
    text = "Example 1\nInput: 4, 9\nOutput: 13, as in example 2. of the book"
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("4, 9", "13, as in example 2. of the book")
    ]


def test_multi_line_output_is_kept_with_its_inner_input_word() -> None:
    text = "Example 1\nInput: def f(x): return x\nOutput: It returns its\nargument, the input: unchanged."
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("def f(x): return x", "It returns its\nargument, the input: unchanged.")
    ]


def test_input_without_output_keeps_an_empty_output() -> None:
    text = "Example 1\nInput: a\nOutput: b\nExample 2\nInput: c\n"
    assert parse_instances(text, is_classification=False) == [
        ParsedInstance("a", "b"),
        ParsedInstance("c", ""),
    ]


def test_empty_response_has_no_instances() -> None:
    assert parse_instances("", is_classification=False) == []
    assert parse_instances("  \n", is_classification=True) == []


def test_output_first_empty_label_keeps_its_input() -> None:
    text = "Class label:\nReview: Fine.\nclass label:  Negative \r\nReview: Awful.\r\n"
    assert parse_instances(text, is_classification=True) == [
        ParsedInstance("Review: Fine.", ""),
        ParsedInstance("Review: Awful.", "Negative"),
    ]


def test_output_first_multi_line_input() -> None:
    text = "Class label: Yes\nCode:\ndef f():\n    return 1 / 0\n\nClass label: No\nCode: x = 1"
    assert parse_instances(text, is_classification=True) == [
        ParsedInstance("Code:\ndef f():\n    return 1 / 0", "Yes"),
        ParsedInstance("Code: x = 1", "No"),
    ]


def test_task_label_after_the_number_is_dropped() -> None:
    text = " Task: Alpha task here.\n10. Task: Beta task here."
    assert parse_instruction_completion(text, first_number=9) == [
        "Alpha task here.",
        "Beta task here.",
    ]


def test_output_first_drops_a_generic_input_label() -> None:
    text = (
        "Class label: Positive\nInput: A short text about a great day.\n"
        "Class label: Negative\ninput 2:\nA short text\nabout a bad day.\n"
    )
    assert parse_instances(text, is_classification=True) == [
        ParsedInstance("A short text about a great day.", "Positive"),
        ParsedInstance("A short text\nabout a bad day.", "Negative"),
    ]


def test_output_first_keeps_a_specific_field_name() -> None:
    text = "Class label: Positive\nSentence: Input: is the first word here.\n"
    assert parse_instances(text, is_classification=True) == [
        ParsedInstance("Sentence: Input: is the first word here.", "Positive"),
    ]
