"""One bootstrap round as two pure halves: plan() decides what to ask, accept() what to keep.

The service in between makes the LLM calls; keeping both halves pure lets the whole round be
tested without a network, a database or a worker.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

from app.selfinstruct.balance import over_verb_cap, root_verb
from app.selfinstruct.filters import filter_instances, instruction_rejection
from app.selfinstruct.judges import InstructionVerdict
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.parsing import parse_instances, parse_instruction_completion
from app.selfinstruct.prompts import build_instruction_prompt
from app.selfinstruct.rouge import RougeLIndex, word_counter
from app.selfinstruct.sampling import sample_prompt_instructions
from app.selfinstruct.sanitize import excerpt
from app.selfinstruct.types import (
    CandidateDecision,
    Completion,
    InstanceDecision,
    InstanceReason,
    InstructionReason,
    ParsedInstance,
    RoundOutcome,
    SeedTask,
)


def prompt_seeds(seeds: Sequence[SeedTask], options: GenerationOptions) -> list[SeedTask]:
    """The seed tasks a job samples from (only classification seeds in that mode)."""
    return [s for s in seeds if s.is_classification] if options.classification_only else list(seeds)


def prompt_seed_instructions(seeds: Sequence[SeedTask], options: GenerationOptions) -> list[str]:
    return [s.instruction for s in prompt_seeds(seeds, options)]


def plan_round(
    seed_instructions: Sequence[str],
    machine_instructions: Sequence[str],
    options: GenerationOptions,
    rng: random.Random,
    seed_weights: Sequence[float] | None = None,
) -> list[str]:
    """The instruction-generation prompts for one round (one per concurrent request)."""
    prompts: list[str] = []
    for _ in range(options.requests_per_round):
        shown = sample_prompt_instructions(
            seed_instructions,
            machine_instructions,
            rng,
            total=options.prompt_instructions,
            machine=options.machine_instructions_per_prompt,
            seed_weights=seed_weights,
        )
        prompts.append(
            build_instruction_prompt(shown, classification_only=options.classification_only)
        )
    return prompts


def accept_round(
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    *,
    remaining: int,
    first_numbers: Sequence[int] | None = None,
    verbs: Counter[str] | None = None,
    verdicts: Mapping[str, InstructionVerdict] | None = None,
) -> RoundOutcome:
    """`decide_round`, with every decision's highest ROUGE-L and nearest text filled in."""
    outcome = decide_round(
        completions,
        index,
        options,
        remaining=remaining,
        first_numbers=first_numbers,
        verbs=verbs,
        verdicts=verdicts,
    )
    outcome.decisions = score_decisions(outcome.decisions, index)
    return outcome


def decide_round(
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    *,
    remaining: int,
    first_numbers: Sequence[int] | None = None,
    verbs: Counter[str] | None = None,
    verdicts: Mapping[str, InstructionVerdict] | None = None,
) -> RoundOutcome:
    """Judge every candidate in prompt order; accepted texts are added to `index` as we go,
    so later candidates of the same round are compared with them too (as in the paper).

    Near-duplicates are told by `index.exceeds` alone: a candidate compared with the pool keeps
    the pool's size then (`pool_items`), and `score_decisions` finds its highest ROUGE-L and
    nearest text later, exactly, so that the search for them never holds up the decisions.

    `remaining` is how many more instructions the job needs; acceptable candidates beyond it are
    recorded as over target rather than silently dropped. `verbs` counts the accepted
    instructions per root verb for `balance.max_per_verb`, and is updated as we go too.
    `verdicts` are the instruction judge's, for the texts `judgeable` picked.
    """
    outcome = RoundOutcome()
    cap = options.balance.max_per_verb if options.balance else None
    verbs = Counter() if verbs is None else verbs
    for prompt_index, completion in enumerate(completions):
        if completion.oversized:
            outcome.decisions.append(oversized_candidate(completion, prompt_index))
            continue
        first = first_numbers[prompt_index] if first_numbers else options.prompt_instructions + 1
        for text in parse_instruction_completion(completion.text, first_number=first):
            verdict = verdicts.get(text) if verdicts else None
            decision = _judge(text, prompt_index, completion, index, options, remaining, verdict)
            if decision.accepted and over_verb_cap(text, verbs, cap):
                decision = replace(decision, reason=InstructionReason.VERB_CAP)
            if decision.accepted:
                index.add(text)
                remaining -= 1
                if cap is not None and (verb := root_verb(text)) is not None:
                    verbs[verb] += 1
            outcome.decisions.append(decision)
    return outcome


def score_decisions(
    decisions: Sequence[CandidateDecision], index: RougeLIndex
) -> list[CandidateDecision]:
    """The decisions with the highest ROUGE-L and nearest text of each one `decide_round`
    compared with the pool: rouge-score's answer against the pool as it stood then (the first
    `pool_items` items of `index`, which has only grown since)."""
    scored = []
    for decision in decisions:
        if decision.pool_items is not None and decision.max_rouge is None:
            match = index.best(decision.text, within=decision.pool_items)
            nearest = index.text(match.item) if match.item is not None else None
            decision = replace(decision, max_rouge=match.score, nearest=nearest)
        scored.append(decision)
    return scored


def oversized_candidate(completion: Completion, prompt_index: int) -> CandidateDecision:
    """An answer cut at the sanitizer's cap is not parsed: one rejection with its start."""
    return CandidateDecision(
        excerpt(completion.text), prompt_index, InstructionReason.OVERSIZED_RESPONSE
    )


def _judge(
    text: str,
    prompt_index: int,
    completion: Completion,
    index: RougeLIndex,
    options: GenerationOptions,
    remaining: int,
    verdict: InstructionVerdict | None = None,
) -> CandidateDecision:
    if completion.truncated:
        return CandidateDecision(text, prompt_index, InstructionReason.TRUNCATED_RESPONSE)
    reason = filter_instruction(text, options)
    if reason is not None:
        return CandidateDecision(text, prompt_index, reason)
    reason, pool_items = pool_decision(text, index, options, remaining, verdict)
    note = verdict.note if verdict is not None else None
    return CandidateDecision(text, prompt_index, reason, judge_note=note, pool_items=pool_items)


def filter_instruction(text: str, options: GenerationOptions) -> InstructionReason | None:
    """The paper's instruction filters (length, keywords, starts) with the job's settings."""
    return instruction_rejection(
        text,
        min_words=options.min_words,
        max_words=options.max_words,
        keyword_blacklist=options.keyword_blacklist,
        count_words=word_counter(options.dedupe_tokenizer),
        reject_non_ascii_start=options.reject_non_ascii_start,
    )


def pool_decision(
    text: str,
    index: RougeLIndex,
    options: GenerationOptions,
    remaining: int,
    verdict: InstructionVerdict | None = None,
) -> tuple[InstructionReason | None, int]:
    """For a text that passed the filters: near-duplicate of the pool, dropped by the judge, or
    over the job's target (None: accepted), and the pool's size then, for `score_decisions`."""
    near = index.exceeds(text, options.rouge_threshold)
    return _pool_reason(near, remaining, verdict), len(index)


def _pool_reason(
    near_duplicate: bool, remaining: int, verdict: InstructionVerdict | None
) -> InstructionReason | None:
    if near_duplicate:
        return InstructionReason.NEAR_DUPLICATE
    if verdict is not None and not verdict.keep:
        return InstructionReason.JUDGE_DROPPED
    if remaining <= 0:
        return InstructionReason.OVER_TARGET
    return None


def judgeable(
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    first_numbers: Sequence[int] | None = None,
) -> list[str]:
    """The round's candidates worth a judge call: they pass the filters and are not near
    duplicates of the pool as it stands (the round's own texts are compared later, in order)."""
    texts: dict[str, None] = {}
    for prompt_index, completion in enumerate(completions):
        if completion.truncated or completion.oversized:
            continue
        first = first_numbers[prompt_index] if first_numbers else options.prompt_instructions + 1
        for text in parse_instruction_completion(completion.text, first_number=first):
            if filter_instruction(text, options) is None and not index.exceeds(
                text, options.rouge_threshold
            ):
                texts.setdefault(text)
    return list(texts)


def judge_instances(
    completion: Completion, *, is_classification: bool, options: GenerationOptions
) -> list[InstanceDecision]:
    """Parse one instance-generation response and apply the paper's instance filters."""
    if completion.oversized:
        rejected = ParsedInstance(input="", output=excerpt(completion.text))
        return [InstanceDecision(rejected, InstanceReason.OVERSIZED_RESPONSE)]
    parsed = parse_instances(completion.text, is_classification=is_classification)
    return filter_instances(
        parsed, truncated=completion.truncated, max_per_task=options.max_instances_per_task
    )
