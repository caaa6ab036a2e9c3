"""Which instructions a step-1 prompt shows, and how they are cleaned."""

from __future__ import annotations

import random

import pytest

from app.selfinstruct.sampling import normalize_instruction, sample_prompt_instructions

SEEDS = [f"Seed task number {i}." for i in range(20)]
MACHINE = [f"Machine task number {i}." for i in range(10)]


def sample(
    seeds: list[str], machine_pool: list[str], seed: int = 1, total: int = 8, machine: int = 2
) -> list[str]:
    return sample_prompt_instructions(
        seeds, machine_pool, random.Random(seed), total=total, machine=machine
    )


def test_paper_mix_of_two_machine_and_six_seed_instructions() -> None:
    shown = sample(SEEDS, MACHINE)
    assert len(shown) == 8 == len(set(shown))
    assert sum(s in MACHINE for s in shown) == 2
    assert sum(s in SEEDS for s in shown) == 6


def test_all_seeds_while_the_machine_pool_is_empty() -> None:
    shown = sample(SEEDS, [])
    assert len(shown) == 8 and set(shown) <= set(SEEDS)


def test_fewer_machine_instructions_while_the_pool_is_small() -> None:
    shown = sample(SEEDS, MACHINE[:1])
    assert sum(s in MACHINE for s in shown) == 1 and len(shown) == 8


def test_fewer_seeds_than_needed_uses_them_all() -> None:
    shown = sample(SEEDS[:3], MACHINE)
    assert set(SEEDS[:3]) <= set(shown)
    assert len(shown) == 5 and sum(s in MACHINE for s in shown) == 2


def test_more_machine_asked_than_shown_is_capped() -> None:
    shown = sample(SEEDS, MACHINE, total=3, machine=5)
    assert len(shown) == 3 and set(shown) <= set(MACHINE)


def test_same_rng_state_same_prompt() -> None:
    assert sample(SEEDS, MACHINE, seed=5) == sample(SEEDS, MACHINE, seed=5)
    assert sample(SEEDS, MACHINE, seed=5) != sample(SEEDS, MACHINE, seed=6)


def test_successive_draws_advance_the_rng() -> None:
    rng = random.Random(3)
    first = sample_prompt_instructions(SEEDS, MACHINE, rng, total=8, machine=2)
    second = sample_prompt_instructions(SEEDS, MACHINE, rng, total=8, machine=2)
    assert first != second


def test_machine_instructions_are_not_always_first() -> None:
    positions = {
        i
        for seed in range(30)
        for i, text in enumerate(sample(SEEDS, MACHINE, seed=seed))
        if text in MACHINE
    }
    assert positions == set(range(8))


def test_inputs_are_not_modified() -> None:
    seeds, machine_pool = list(SEEDS), list(MACHINE)
    sample(seeds, machine_pool)
    assert seeds == SEEDS and machine_pool == MACHINE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Sort\n the   list:  ", "Sort the list"),
        ("Sort the list :", "Sort the list"),
        ("Fill in the blanks::", "Fill in the blanks:"),  # only one colon goes
        ("Translate:\tEnglish to French.", "Translate: English to French."),
        ("\r\nName a colour.\r\n", "Name a colour."),
        ("", ""),
    ],
)
def test_normalize_instruction(raw: str, expected: str) -> None:
    assert normalize_instruction(raw) == expected
