"""One bootstrap round as pure code: planned prompts, judged candidates, judged instances."""

from __future__ import annotations

import random

from rouge_score import rouge_scorer

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.prompts import CLASSIFICATION_INSTRUCTION_HEADER
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import (
    accept_round,
    decide_round,
    judge_instances,
    plan_round,
    prompt_seed_instructions,
    score_decisions,
)
from app.selfinstruct.types import (
    Completion,
    InstanceReason,
    InstructionReason,
    SeedInstance,
    SeedTask,
)

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


def test_plan_round_shows_machine_instructions_and_classification_header() -> None:
    machine = ["Sort the words in the sentence alphabetically."]
    options = GenerationOptions(requests_per_round=4, classification_only=True)
    prompts = plan_round(SEEDS, machine, options, random.Random(2))
    assert all(p.startswith(CLASSIFICATION_INSTRUCTION_HEADER + "\n1. ") for p in prompts)
    assert all(f". {machine[0]}\n" in p for p in prompts)
    assert len(set(prompts)) > 1  # each request gets its own sample


def test_prompt_seed_instructions_in_classification_mode() -> None:
    seeds = [
        SeedTask("a", "a", "Is the review positive?", (SeedInstance("x", "Yes"),), True),
        SeedTask("b", "b", "Write a poem about rain.", (SeedInstance("", "Drops."),), False),
    ]
    assert prompt_seed_instructions(seeds, GenerationOptions(classification_only=True)) == [
        "Is the review positive?"
    ]
    assert len(prompt_seed_instructions(seeds, GenerationOptions())) == 2


def test_accepted_candidates_record_their_nearest_text() -> None:
    index = RougeLIndex(SEEDS)
    outcome = accept_round(
        [Completion(" Explain topic number 4 in a short poem for children at bedtime.")],
        index,
        GenerationOptions(),
        remaining=5,
    )
    (decision,) = outcome.decisions
    assert decision.accepted and decision.nearest == SEEDS[4]
    assert decision.max_rouge is not None and 0.0 < decision.max_rouge <= 0.7


def test_first_numbers_per_prompt_and_messy_numbering() -> None:
    completions = [
        Completion(
            "Task 4: Name the largest ocean on Earth.\r\n6 . Give a synonym for happy.\r\n7."
        ),
        Completion(" List three uses of baking soda at home."),
    ]
    outcome = accept_round(
        completions, RougeLIndex(SEEDS), GenerationOptions(), remaining=10, first_numbers=[4, 9]
    )
    assert [(d.text, d.prompt_index, d.accepted) for d in outcome.decisions] == [
        ("Name the largest ocean on Earth.", 0, True),
        ("Give a synonym for happy.", 0, True),
        ("List three uses of baking soda at home.", 1, True),
    ]
    assert [d.text for d in outcome.accepted] == [d.text for d in outcome.decisions]


def test_nothing_needed_means_over_target() -> None:
    index = RougeLIndex(SEEDS)
    outcome = accept_round(
        [Completion(" Name the largest ocean on Earth.")], index, GenerationOptions(), remaining=0
    )
    assert [d.reason for d in outcome.decisions] == [InstructionReason.OVER_TARGET]
    assert len(index) == len(SEEDS)


def test_judge_instances_input_first_end_to_end() -> None:
    text = (
        "Example 1\nInput: 3 + 4\nOutput: 7\n"
        "Example 2\nInput: 3 + 4\nOutput: 7\n"
        "Example 3\nOutput:\n"
        "Example 4\nInput: 10 - 2\nOutput: 8\n"
    )
    decisions = judge_instances(
        Completion(text), is_classification=False, options=GenerationOptions()
    )
    assert [(d.instance.input, d.instance.output, d.reason) for d in decisions] == [
        ("3 + 4", "7", None),
        ("3 + 4", "7", InstanceReason.DUPLICATE),
        ("", "", InstanceReason.EMPTY_OUTPUT),
        ("10 - 2", "8", None),
    ]


def test_judge_instances_output_first_with_conflict_and_limit() -> None:
    text = "Class label: Yes\nNumber: 7\nClass label: No\nNumber: 7\n"
    decisions = judge_instances(
        Completion(text), is_classification=True, options=GenerationOptions()
    )
    assert [d.reason for d in decisions] == [InstanceReason.CONFLICTING_OUTPUTS] * 2
    labels = "".join(f"Class label: L{i}\nText: t{i}\n" for i in range(4))
    decisions = judge_instances(
        Completion(labels),
        is_classification=True,
        options=GenerationOptions(max_instances_per_task=3),
    )
    assert [d.reason for d in decisions] == [None] * 3 + [InstanceReason.OVER_LIMIT]


def test_scores_found_after_later_rounds_are_rouge_scores_against_the_pool_then() -> None:
    """Decisions need no score, and are those of accept_round; the highest ROUGE-L and nearest
    text found once later rounds grew the pool are rouge-score's against the seeds and what was
    accepted before each candidate."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    options = GenerationOptions()
    rounds = [
        " Summarize the article in three sentences.\n10. Write a haiku about autumn rain.",
        " Summarize the article in three short sentences.\n10. Explain topic number 4 to kids.",
        " Write a haiku about the autumn rain at night.\n10. Convert miles to kilometres.",
        " Translate the menu into Spanish for tourists.\n10. Summarize the story in a sentence.",
    ]
    index, scored_at_once = RougeLIndex(SEEDS), RougeLIndex(SEEDS)
    decided, at_once = [], []
    for text in rounds:
        outcome = decide_round([Completion(text)], index, options, remaining=5)
        assert all(d.max_rouge is None and d.nearest is None for d in outcome.decisions)
        decided += outcome.decisions
        at_once += accept_round([Completion(text)], scored_at_once, options, remaining=5).decisions
    scored = score_decisions(decided, index)
    assert [(d.reason, d.max_rouge, d.nearest) for d in scored] == [
        (d.reason, d.max_rouge, d.nearest) for d in at_once
    ]
    pool = list(SEEDS)
    for decision in scored:
        scores = [scorer.score(item, decision.text)["rougeL"].fmeasure for item in pool]
        top = max(scores)
        assert decision.max_rouge == top
        assert decision.nearest == (pool[scores.index(top)] if top > 0 else None)
        if decision.accepted:
            pool.append(decision.text)
    reasons = {d.reason for d in scored}
    assert InstructionReason.NEAR_DUPLICATE in reasons and None in reasons
    assert len(index) == len(pool)
