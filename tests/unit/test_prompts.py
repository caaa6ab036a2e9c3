"""The exact prompt text of the three steps; our own parsers must read our own examples back."""

from __future__ import annotations

import pytest

from app.selfinstruct.parsing import parse_classification_answer, parse_instances
from app.selfinstruct.prompts import (
    CLASSIFICATION_INSTRUCTION_HEADER,
    CLASSIFY_EXAMPLES,
    CLASSIFY_HEADER,
    CLASSIFY_QUESTION,
    INPUT_FIRST_EXAMPLES,
    INPUT_FIRST_HEADER,
    INSTRUCTION_HEADER,
    OUTPUT_FIRST_EXAMPLES,
    OUTPUT_FIRST_HEADER,
    build_classification_prompt,
    build_instance_prompt,
    build_instruction_prompt,
)


def test_instruction_prompt_exact_text() -> None:
    assert build_instruction_prompt(
        ["Sort the list:", "Name  a\ncolor.", " Add two numbers. "]
    ) == (
        "Come up with a series of tasks:\n"
        "1. Sort the list\n"
        "2. Name a color.\n"
        "3. Add two numbers.\n"
        "4."
    )


def test_classification_only_instruction_prompt() -> None:
    prompt = build_instruction_prompt(
        ["Is the review positive or negative?"], classification_only=True
    )
    assert prompt == (
        f"{CLASSIFICATION_INSTRUCTION_HEADER}\n1. Is the review positive or negative?\n2."
    )
    assert not prompt.startswith(INSTRUCTION_HEADER + "\n")


def test_eight_instructions_end_in_nine() -> None:
    prompt = build_instruction_prompt([f"Task {i} is here." for i in range(8)])
    lines = prompt.split("\n")
    assert lines[0] == INSTRUCTION_HEADER and len(lines) == 10
    assert lines[-1] == "9." and lines[-2] == "8. Task 7 is here."


def test_classification_prompt_layout() -> None:
    prompt = build_classification_prompt("  Is the email\nspam? ")
    blocks = prompt.split("\n\n")
    assert blocks[0] == CLASSIFY_HEADER
    assert blocks[-1] == f"Task: Is the email spam?\n{CLASSIFY_QUESTION}"
    assert len(blocks) == len(CLASSIFY_EXAMPLES) + 2
    assert blocks[1] == f"Task: {CLASSIFY_EXAMPLES[0][0]}\n{CLASSIFY_QUESTION} " + (
        "Yes" if CLASSIFY_EXAMPLES[0][1] else "No"
    )


def test_classification_examples_are_balanced_and_distinct() -> None:
    answers = [answer for _, answer in CLASSIFY_EXAMPLES]
    assert 10 <= answers.count(True) <= 14 and 15 <= answers.count(False) <= 20
    assert len({task for task, _ in CLASSIFY_EXAMPLES}) == len(CLASSIFY_EXAMPLES)


def test_every_classification_example_parses_back() -> None:
    prompt = build_classification_prompt("Anything at all.")
    for block, (_, answer) in zip(prompt.split("\n\n")[1:-1], CLASSIFY_EXAMPLES, strict=True):
        verdict = block.split(CLASSIFY_QUESTION)[1]
        assert parse_classification_answer(verdict) is answer


def test_input_first_prompt() -> None:
    prompt = build_instance_prompt("Summarize the text:", is_classification=False)
    assert prompt.startswith(INPUT_FIRST_HEADER + "\n\nTask: ")
    assert prompt.endswith("\n\nTask: Summarize the text\n")
    assert "Example 1\nInput: She don't like apples.\nOutput: She doesn't like apples." in prompt
    assert "Example 6" not in prompt  # the stop sequence must not appear in the few-shot text
    assert prompt.count("Task: ") == len(INPUT_FIRST_EXAMPLES) + 1


def test_input_first_examples_without_input_show_only_the_output() -> None:
    prompt = build_instance_prompt("Tell a joke.", is_classification=False)
    assert (
        "Task: Write a short motivational quote about learning.\n"
        "Output: Every expert was once a beginner who refused to quit.\n\n"
    ) in prompt


@pytest.mark.parametrize(("task", "instances"), INPUT_FIRST_EXAMPLES)
def test_input_first_examples_parse_back(task: str, instances: tuple[tuple[str, str], ...]) -> None:
    prompt = build_instance_prompt("Anything at all.", is_classification=False)
    block = next(b for b in prompt.split("\n\nTask: ") if b.startswith(task))
    parsed = parse_instances(block.removeprefix(task), is_classification=False)
    assert [(p.input, p.output) for p in parsed] == list(instances)


def test_output_first_prompt() -> None:
    prompt = build_instance_prompt("Is it spam?", is_classification=True)
    assert prompt.startswith(OUTPUT_FIRST_HEADER + "\n\nTask: ")
    assert prompt.endswith("\n\nTask: Is it spam?\n")
    assert "Class label: Positive\nReview: Arrived early" in prompt
    assert prompt.count("Task: ") == len(OUTPUT_FIRST_EXAMPLES) + 1
    assert "Example" not in prompt and "Input:" not in prompt


@pytest.mark.parametrize(("task", "field", "pairs"), OUTPUT_FIRST_EXAMPLES)
def test_output_first_examples_parse_back(
    task: str, field: str, pairs: tuple[tuple[str, str], ...]
) -> None:
    prompt = build_instance_prompt("Anything at all.", is_classification=True)
    block = next(b for b in prompt.split("\n\nTask: ") if b.startswith(task))
    parsed = parse_instances(block.removeprefix(task), is_classification=True)
    assert [(p.output, p.input) for p in parsed] == [
        (label, f"{field}: {text}") for label, text in pairs
    ]


def test_prompts_stay_short() -> None:
    """They are sent once per instruction, so their size is a running cost."""
    for prompt in (
        build_classification_prompt("x"),
        build_instance_prompt("x", is_classification=False),
        build_instance_prompt("x", is_classification=True),
    ):
        assert len(prompt.split()) < 700
