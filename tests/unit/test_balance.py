"""Balancing while generating: the controller, the seed weights, the verb cap."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from app.selfinstruct.balance import (
    MIN_KNOWN,
    MixSoFar,
    count_verbs,
    desired_share,
    over_verb_cap,
    seed_weights,
)
from app.selfinstruct.options import BalanceTargets, GenerationOptions
from app.selfinstruct.prompts import build_instruction_prompt
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import accept_round, plan_round
from app.selfinstruct.sampling import sample_prompt_instructions, weighted_sample
from app.selfinstruct.types import Completion, InstructionReason, SeedInstance, SeedTask


def _seed(n: int, *, classification: bool, with_input: bool) -> SeedTask:
    instance = SeedInstance("Some input." if with_input else "", "Out.")
    kind = "Classify" if classification else "Write"
    return SeedTask(f"s{n}", f"s{n}", f"{kind} task number {n}.", (instance,), classification)


# 2 of 10 seeds are classification; 5 of 10 have an input.
SEEDS = [_seed(n, classification=n < 2, with_input=n % 2 == 0) for n in range(10)]


def test_desired_share_follows_the_error_once_it_means_something() -> None:
    assert desired_share(0.5, part=0, known=MIN_KNOWN - 1) == 0.5
    assert desired_share(0.5, part=3, known=10) == pytest.approx(0.7)
    assert desired_share(0.5, part=10, known=10) == 0.02  # never asks for none
    assert desired_share(0.9, part=0, known=20) == 0.98


def test_seed_weights_give_the_desired_composition() -> None:
    targets = BalanceTargets(classification_share=0.5)
    weights = seed_weights(SEEDS, targets, MixSoFar())
    assert weights is not None
    classification_weight = sum(
        w for w, s in zip(weights, SEEDS, strict=True) if s.is_classification
    )
    assert classification_weight / sum(weights) == pytest.approx(0.5)
    # Sampled without replacement into prompts, the share follows.
    rng = random.Random(0)
    shown = [s for _ in range(2000) for s in weighted_sample(SEEDS, weights, 4, rng)]
    share = sum(s.is_classification for s in shown) / len(shown)
    assert 0.35 <= share <= 0.5  # uniform gives 0.2; with 2 such seeds, 2 of 4 at most
    assert seed_weights(SEEDS, BalanceTargets(max_per_verb=3), MixSoFar()) is None


def test_both_targets_multiply_and_steer_against_the_drift() -> None:
    targets = BalanceTargets(classification_share=0.2, input_share=0.5)
    drifted = MixSoFar(classified=40, classification=20, with_instances=40, with_input=20)
    weights = seed_weights(SEEDS, targets, drifted)
    assert weights is not None
    cls = sum(w for w, s in zip(weights, SEEDS, strict=True) if s.is_classification) / sum(weights)
    assert cls == pytest.approx(0.02)  # 50% so far against 20%: ask for as few as allowed
    with_input = sum(w for w, s in zip(weights, SEEDS, strict=True) if s.instances[0].input) / sum(
        weights
    )
    assert with_input == pytest.approx(0.5)


def test_weighted_plan_differs_and_unweighted_plan_is_the_papers() -> None:
    options = GenerationOptions(prompt_instructions=4, machine_instructions_per_prompt=0)
    texts = [s.instruction for s in SEEDS]
    plain = plan_round(texts, [], options, random.Random(1))
    rng = random.Random(1)  # without weights: the paper's uniform sampler, draw for draw
    assert plain == [
        build_instruction_prompt(sample_prompt_instructions(texts, [], rng, total=4, machine=0))
        for _ in range(options.requests_per_round)
    ]
    weights = [100.0 if s.is_classification else 1.0 for s in SEEDS]
    steered = plan_round(texts, [], options, random.Random(1), weights)
    assert all("Classify task number 0." in p and "Classify task number 1." in p for p in steered)


def _completion(*items: str) -> Completion:
    body = "\n".join(f"{n}. {text}" for n, text in enumerate(items, 9))
    return Completion(" " + body.removeprefix("9. ") + "\n", "stop")


def test_verb_cap_rejects_in_step_one_and_counts_as_it_goes() -> None:
    options = GenerationOptions(balance=BalanceTargets(max_per_verb=2))
    verbs = Counter({"write": 1})
    completion = _completion(
        "Write a limerick about a cat who sails to Norway.",
        "Write a haiku about the first snow of the winter.",
        "Summarize the history of tea in two short sentences.",
    )
    outcome = accept_round([completion], RougeLIndex(), options, remaining=10, verbs=verbs)
    reasons = [d.reason for d in outcome.decisions]
    assert reasons == [None, InstructionReason.VERB_CAP, None]
    assert verbs == Counter({"write": 2, "summarize": 1})
    assert over_verb_cap("Write more.", verbs, None) is None
    assert over_verb_cap("Write more.", verbs, 2) == "write"
    assert count_verbs(["Write a poem.", "Explain tides.", "Write a song."])["write"] == 2


def test_balance_is_checked_and_paper_mode_only() -> None:
    with pytest.raises(ValidationError, match="classification_share"):
        GenerationOptions.model_validate({"balance": {"classification_share": 1.5}})
    with pytest.raises(ValidationError, match="batched mode"):
        GenerationOptions.model_validate({"mode": "batched", "balance": {"max_per_verb": 3}})
