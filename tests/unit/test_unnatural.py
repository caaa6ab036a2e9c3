"""Unnatural-Instructions mode: core prompts and parsing, outputs, reformulations."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.types import (
    Completion,
    InstanceReason,
    InstructionReason,
    SeedInstance,
    SeedTask,
)
from app.selfinstruct.unnatural import (
    NO_CONSTRAINTS,
    CoreExample,
    accept_unnatural_round,
    build_core_prompt,
    build_output_prompt,
    build_rephrase_prompt,
    constraints_for,
    core_stop,
    judge_output,
    judge_reformulations,
    parse_core,
    parse_rephrasings,
    plan_unnatural_round,
)

SENTIMENT = SeedTask(
    "s1",
    "sentiment",
    "Is the review positive or negative?",
    (SeedInstance("Great food.", "Positive"), SeedInstance("Cold soup.", "Negative")),
    True,
)
SUMMARY = SeedTask(
    "s2",
    "summary",
    "Summarize the text in one sentence:",
    (SeedInstance("", "No input here."), SeedInstance("A long text.", "Short.")),
    False,
)


def test_constraints_are_derived_from_the_seeds() -> None:
    assert constraints_for(SENTIMENT) == 'The output should be one of: "Positive", "Negative".'
    assert constraints_for(SUMMARY) == NO_CONSTRAINTS


def test_core_prompt_shows_demonstrations_with_inputs_and_leaves_the_next() -> None:
    options = GenerationOptions(mode="unnatural", requests_per_round=2, unnatural_examples=2)
    prompts = plan_unnatural_round([SENTIMENT, SUMMARY], options, random.Random(0))
    assert len(prompts) == 2
    prompt = prompts[0]
    assert prompt.startswith("Example 1\nInstruction: ") and prompt.endswith(
        "Example 3\nInstruction:"
    )
    assert "Input: A long text." in prompt  # the instance with an input is the one shown
    assert "Summarize the text in one sentence\n" in prompt  # the trailing colon dropped
    assert core_stop(2) == ("Example 4", "\n\n\n")
    assert build_core_prompt([CoreExample("Do X.", "", NO_CONSTRAINTS)]).count("Input: None") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Name the capital.\nInput: France\nConstraints: One word.\n\nExample 5\nInstruction: x",
         CoreExample("Name the capital.", "France", "One word.")),
        (" Tell a joke.\nInput: None\nConstraints: none", CoreExample("Tell a joke.", "", NO_CONSTRAINTS)),
        (" Tell a joke.\nInput: None\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_parse_core(text: str, expected: CoreExample | None) -> None:
    assert parse_core(text) == expected


def test_cores_are_filtered_and_deduplicated_like_instructions() -> None:
    options = GenerationOptions(mode="unnatural")
    index = RougeLIndex(["Write a short poem about the sea and the wind."])
    completions = [
        Completion(" Write a short poem about the sea and the wind.\nInput: None\nConstraints: None."),
        Completion(" Explain how tides work to a child.\nInput: None\nConstraints: None."),
        Completion(" Explain how tides work to a child.\nInput: None\nConstraints: None."),
        Completion(" Draw a map of the town.\nInput: None\nConstraints: None."),
        Completion(" Something else entirely"),
        Completion(" Describe the moon", "length"),
    ]  # fmt: skip
    outcome = accept_unnatural_round(completions, index, options, remaining=10)
    assert [d.reason for d in outcome.decisions] == [
        InstructionReason.NEAR_DUPLICATE,
        None,
        InstructionReason.NEAR_DUPLICATE,
        InstructionReason.BLACKLISTED_KEYWORD,
        InstructionReason.UNPARSEABLE,
        InstructionReason.TRUNCATED_RESPONSE,
    ]
    assert outcome.decisions[1].core == CoreExample(
        "Explain how tides work to a child.", "", NO_CONSTRAINTS
    )
    assert len(index) == 2


def test_outputs_pass_the_instance_filters() -> None:
    core = CoreExample("Repeat the word.", "hello", NO_CONSTRAINTS)
    prompt = build_output_prompt(core)
    assert prompt.endswith("Input: hello\nConstraints: None.\nOutput:")
    assert judge_output(core, Completion(" Hello there.")).accepted
    assert judge_output(core, Completion(" hello")).reason is InstanceReason.INPUT_EQUALS_OUTPUT
    assert judge_output(core, Completion("  ")).reason is InstanceReason.EMPTY_OUTPUT
    assert not judge_output(core, Completion(" Hel", "length")).accepted


def test_reformulations_are_filtered_and_deduplicated_among_themselves() -> None:
    core = "Plan a six-day schedule for running a first marathon."
    prompt = build_rephrase_prompt(core, 3)
    assert prompt.startswith("Rephrase each task in 3 different ways.")
    assert prompt.endswith(f"Task: {core}\nRephrasings:\n1.")
    texts = parse_rephrasings(
        " Please plan a six-day schedule for running a first marathon.\n"
        "2. Plan a six-day schedule for running a first marathon.\n"
        "3. Please plan a six day schedule for running a first marathon!\n"
        "4. Do it.\n5. Make a six-day training plan for a first-time marathon runner.",
        4,
    )
    assert len(texts) == 4
    decided = judge_reformulations(core, texts, GenerationOptions(mode="unnatural"))
    assert [d.reason for d in decided] == [
        None,
        InstructionReason.NEAR_DUPLICATE,  # a copy of its core adds nothing
        InstructionReason.NEAR_DUPLICATE,  # a copy of its sibling
        InstructionReason.TOO_SHORT,
    ]
    assert decided[1].nearest == core and decided[2].nearest == texts[0]


def test_unnatural_options() -> None:
    assert GenerationOptions(mode="unnatural").reformulations == 3
    with pytest.raises(ValidationError, match="batch_api"):
        GenerationOptions(mode="unnatural", batch_api=True)
    with pytest.raises(ValidationError, match="reformulations"):
        GenerationOptions.model_validate({"mode": "unnatural", "reformulations": 11})
