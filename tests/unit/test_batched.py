"""Batched (Alpaca-style) mode: prompt, parser, and the same filters as the paper's mode."""

from __future__ import annotations

import random

from app.data import load_default_seed_tasks
from app.selfinstruct.batched import (
    BatchedTask,
    accept_batched_round,
    batched_stop,
    build_batched_prompt,
    parse_batched_completion,
    plan_batched_round,
)
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.types import Completion, InstructionReason
from tests.support.fake_llm import batched_answer

COMPLETION = """ Suggest three names for a bakery that sells sourdough bread.
4. Input:
<noinput>
4. Output:
1. Rise & Crumb
2. The Wild Yeast
3. Crust Theory
###
5. Instruction: Classify the sentiment of the review as positive or negative.
5. Input:
The pasta was cold and the waiter ignored us.
5. Output:
Negative
###
6. Instruction: Rewrite the sentence in the passive voice.
6. Input:
The committee approved the budget.
6. Output:
The committee approved the budget.
###
7. this block lost its labels
###
8. Instruction: Suggest three names for a bakery that sells sourdough bread please.
8. Input:
<noinput>
8. Output:
Loaf Story
###
9. Instruction: Give two tips for"""


def test_prompt_continues_after_the_next_number() -> None:
    prompt = build_batched_prompt(
        [BatchedTask("Name a colour.", "", "Blue"), BatchedTask("Add the numbers.", "2 3", "5")],
        count=20,
    )
    assert prompt.startswith("Write 20 new tasks")
    assert "###\n1. Instruction: Name a colour.\n1. Input:\n<noinput>\n1. Output:\nBlue" in prompt
    assert prompt.endswith("###\n3. Instruction:")
    assert batched_stop(2, 20) == ("23. Instruction", "23. instruction")


def test_parser_reads_blocks_and_marks_unreadable_ones() -> None:
    tasks = parse_batched_completion(COMPLETION)
    assert tasks[0] == BatchedTask(
        "Suggest three names for a bakery that sells sourdough bread.",
        "",
        "1. Rise & Crumb\n2. The Wild Yeast\n3. Crust Theory",
    )
    assert (
        tasks[1] is not None
        and tasks[1].input.startswith("The pasta")
        and tasks[1].output == "Negative"
    )
    assert tasks[3] is None
    assert len(tasks) == 6


def test_accept_applies_instruction_instance_and_rouge_filters() -> None:
    index = RougeLIndex()
    outcome = accept_batched_round(
        [Completion(COMPLETION, "length")], index, GenerationOptions(), remaining=100
    )
    reasons = [d.reason for d in outcome.decisions]
    assert reasons == [
        None,
        None,
        InstructionReason.INVALID_INSTANCE,  # output equals input
        InstructionReason.INVALID_INSTANCE,  # unreadable block
        InstructionReason.NEAR_DUPLICATE,
        InstructionReason.TRUNCATED_RESPONSE,  # only the last task of a cut-off answer
    ]
    assert outcome.decisions[0].instance is not None and outcome.decisions[0].instance.accepted
    assert len(index) == 2


def test_fake_model_answers_plan_and_filters_keep_most() -> None:
    rng = random.Random(3)
    options = GenerationOptions(mode="batched", requests_per_round=2)
    prompts = plan_batched_round(load_default_seed_tasks(), options, rng)
    assert len(prompts) == 2 and all(p.count("###") == 4 for p in prompts)
    completions = [Completion(batched_answer(p, rng)) for p in prompts]
    outcome = accept_batched_round(completions, RougeLIndex(), options, remaining=1000)
    assert len(outcome.decisions) >= 16
    assert len(outcome.accepted) >= len(outcome.decisions) // 2
