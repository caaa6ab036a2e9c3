"""One bootstrap round as pure code: planned prompts, judged candidates, judged instances."""

from __future__ import annotations

import random

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import accept_round, judge_instances, plan_round
from app.selfinstruct.types import Completion, InstanceReason, InstructionReason

SEEDS = [f"Explain topic number {i} to a curious student." for i in range(10)]


def test_plan_round_makes_one_prompt_per_request() -> None:
    options = GenerationOptions(requests_per_round=3)
    prompts = plan_round(
        SEEDS, ["Sort the words in the sentence alphabetically."], options, random.Random(0)
    )
    assert len(prompts) == 3
    assert all(p.endswith("\n9.") for p in prompts)
    assert plan_round(SEEDS, [], options, random.Random(0)) == plan_round(
        SEEDS, [], options, random.Random(0)
    )


def test_accept_round_applies_filters_in_prompt_order() -> None:
    options = GenerationOptions()
    index = RougeLIndex(SEEDS)
    completions = [
        Completion(
            " Summarize the article in three sentences.\n"
            "10. Summarize the article in three short sentences.\n"  # near-duplicate of the first
            "11. Describe the picture you see.\n"
            "12. Sort numbers.\n"
            "13. Explain topic number 4 to a curious student."  # a seed
        ),
        Completion(" Write a limerick about a cat who loves rain.", finish_reason="length"),
        Completion(
            " Translate the menu into Spanish for tourists.\n10. Convert miles to kilometres with a formula."
        ),
    ]
    outcome = accept_round(completions, index, options, remaining=2)
    reasons = [(d.text, d.reason) for d in outcome.decisions]
    assert reasons == [
        ("Summarize the article in three sentences.", None),
        ("Summarize the article in three short sentences.", InstructionReason.NEAR_DUPLICATE),
        ("Describe the picture you see.", InstructionReason.BLACKLISTED_KEYWORD),
        ("Sort numbers.", InstructionReason.TOO_SHORT),
        ("Explain topic number 4 to a curious student.", InstructionReason.NEAR_DUPLICATE),
        ("Write a limerick about a cat who loves rain.", InstructionReason.TRUNCATED_RESPONSE),
        ("Translate the menu into Spanish for tourists.", None),
        ("Convert miles to kilometres with a formula.", InstructionReason.OVER_TARGET),
    ]
    near = outcome.decisions[1]
    assert near.nearest == "Summarize the article in three sentences." and near.max_rouge > 0.7
    assert len(index) == len(SEEDS) + 2


def test_judge_instances() -> None:
    decisions = judge_instances(
        Completion("Example 1\nInput: a\nOutput: b\nExample 2\nInput: c\nOutput: d", "length"),
        is_classification=False,
        options=GenerationOptions(),
    )
    assert [d.reason for d in decisions] == [None, InstanceReason.TRUNCATED]
