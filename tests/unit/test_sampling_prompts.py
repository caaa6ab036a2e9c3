"""Prompt sampling and the exact prompt formats."""

from __future__ import annotations

import random

from app.selfinstruct.prompts import (
    CLASSIFY_QUESTION,
    INPUT_FIRST_HEADER,
    OUTPUT_FIRST_HEADER,
    build_classification_prompt,
    build_instance_prompt,
    build_instruction_prompt,
)
from app.selfinstruct.sampling import normalize_instruction, sample_prompt_instructions

SEEDS = [f"Seed task number {i}." for i in range(20)]
MACHINE = [f"Machine task number {i}." for i in range(10)]


def test_two_machine_and_six_seed_instructions() -> None:
    shown = sample_prompt_instructions(SEEDS, MACHINE, random.Random(1), total=8, machine=2)
    assert len(shown) == 8 == len(set(shown))
    assert sum(s in MACHINE for s in shown) == 2


def test_fewer_machine_instructions_while_pool_is_small() -> None:
    shown = sample_prompt_instructions(SEEDS, MACHINE[:1], random.Random(1), total=8, machine=2)
    assert sum(s in MACHINE for s in shown) == 1 and len(shown) == 8


def test_fewer_seeds_than_needed() -> None:
    shown = sample_prompt_instructions(SEEDS[:3], [], random.Random(1), total=8, machine=2)
    assert sorted(shown) == sorted(SEEDS[:3])


def test_sampling_is_deterministic_and_shuffled() -> None:
    first = [
        sample_prompt_instructions(SEEDS, MACHINE, random.Random(5), total=8, machine=2)
        for _ in range(2)
    ]
    assert first[0] == first[1]
    orders = {
        tuple(sample_prompt_instructions(SEEDS, [], random.Random(s), total=20, machine=0))
        for s in range(5)
    }
    assert len(orders) == 5


def test_normalize() -> None:
    assert normalize_instruction("  Sort\n the   list:  ") == "Sort the list"


def test_instruction_prompt_exact() -> None:
    assert build_instruction_prompt(["Sort the list:", "Name  a color."]) == (
        "Come up with a series of tasks:\n1. Sort the list\n2. Name a color.\n3."
    )
    assert build_instruction_prompt(["A b c d."], classification_only=True).startswith(
        "Come up with a series of classification tasks"
    )


def test_classification_prompt_ends_with_the_question() -> None:
    prompt = build_classification_prompt("Is the email spam?")
    assert prompt.endswith(f"\n\nTask: Is the email spam?\n{CLASSIFY_QUESTION}")
    assert (
        prompt.count(f"{CLASSIFY_QUESTION} Yes") >= 10
        and prompt.count(f"{CLASSIFY_QUESTION} No") >= 15
    )


def test_instance_prompts() -> None:
    ordinary = build_instance_prompt("Summarize the text.", is_classification=False)
    assert ordinary.startswith(INPUT_FIRST_HEADER) and ordinary.endswith(
        "\n\nTask: Summarize the text.\n"
    )
    assert "Example 1\nInput:" in ordinary and "Example 6" not in ordinary
    labels = build_instance_prompt("Is it spam?", is_classification=True)
    assert labels.startswith(OUTPUT_FIRST_HEADER) and "Class label:" in labels
    assert "Task:" not in labels.split("\n\n")[0]
