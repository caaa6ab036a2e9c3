"""Unnatural-Instructions mode (Honovich et al., 2023), beside the paper's Self-Instruct.

1. Core examples: each request shows a few demonstrations drawn from the seeds (instruction,
   input, constraints on the output) and leaves the next one for the model to write. The same
   instruction filters and ROUGE-L dedupe as Self-Instruct decide which cores are kept.
2. Outputs: the model answers each kept core (instruction, input and constraints), zero-shot and
   greedily; the instance filters apply.
3. Expansion: the model rephrases each core's instruction several times. Each reformulation is its
   own example with the core's input and output, linked to its core. Reformulations pass the
   instruction filters and are deduplicated among themselves; not against their own core, which
   they rephrase by design, nor against the job's pool, which holds the cores only.

Our seeds carry no constraints, so they are derived: a classification task's constraint names
its labels (the distinct outputs of its instances); other tasks have none.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.selfinstruct.filters import filter_instances
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.parsing import parse_instruction_completion
from app.selfinstruct.prompts import normalize_instruction
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex
from app.selfinstruct.rounds import filter_instruction, oversized_candidate, pool_decision
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

NO_CONSTRAINTS = "None."
_MAX_LABELS = 10
_FIELDS = re.compile(
    r"(?is)^\s*instruction\s*:\s*(?P<instruction>.*?)"
    r"\n\s*input\s*:\s*(?P<input>.*?)"
    r"\n\s*constraints?\s*:\s*(?P<constraints>.*?)\s*$"
)
_NONE = frozenset({"", "none", "none.", "n/a", "<noinput>", "no input", "no input."})

REPHRASE_HEADER = (
    "Rephrase each task in {count} different ways. Keep what it asks for, its input and its "
    "expected output exactly the same; change the wording and the sentence structure."
)
REPHRASE_EXAMPLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Decide whether the review below is positive or negative.",
        (
            "Is the sentiment of the following review positive or negative?",
            "Read the review and label it as either positive or negative.",
            "Tell me if the opinion in this review is a positive or a negative one.",
        ),
    ),
    (
        "Summarize the paragraph in one sentence.",
        (
            "Write a one-sentence summary of the paragraph.",
            "Condense the following paragraph into a single sentence.",
            "In just one sentence, what does this paragraph say?",
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class CoreExample:
    instruction: str
    input: str
    constraints: str


def constraints_for(seed: SeedTask) -> str:
    """The constraint shown with a seed: its labels when it is a classification task."""
    if not seed.is_classification:
        return NO_CONSTRAINTS
    labels = list(dict.fromkeys(i.output.strip() for i in seed.instances if i.output.strip()))
    if not labels or len(labels) > _MAX_LABELS:
        return NO_CONSTRAINTS
    return "The output should be one of: " + ", ".join(f'"{label}"' for label in labels) + "."


def demonstration(seed: SeedTask, rng: random.Random) -> CoreExample:
    """A seed as a core example, with one of its instances (one with an input when it has one:
    the method is about tasks with inputs)."""
    with_input = [i for i in seed.instances if i.input.strip()]
    instance = rng.choice(with_input or list(seed.instances))
    return CoreExample(seed.instruction, instance.input.strip(), constraints_for(seed))


def _block(number: int, example: CoreExample) -> str:
    return (
        f"Example {number}\n"
        f"Instruction: {normalize_instruction(example.instruction)}\n"
        f"Input: {example.input or 'None'}\n"
        f"Constraints: {example.constraints}"
    )


def build_core_prompt(examples: Sequence[CoreExample]) -> str:
    """The demonstrations, then the next example's number and "Instruction:" to continue."""
    blocks = [_block(n, e) for n, e in enumerate(examples, 1)]
    blocks.append(f"Example {len(examples) + 1}\nInstruction:")
    return "\n\n".join(blocks)


def core_stop(examples: int) -> tuple[str, ...]:
    return (f"Example {examples + 2}", "\n\n\n")


def plan_unnatural_round(
    seeds: Sequence[SeedTask], options: GenerationOptions, rng: random.Random
) -> list[str]:
    pool = [s for s in seeds if s.instances]
    count = min(options.unnatural_examples, len(pool))
    return [
        build_core_prompt([demonstration(s, rng) for s in rng.sample(pool, count)])
        for _ in range(options.requests_per_round)
    ]


def parse_core(text: str) -> CoreExample | None:
    """The model's continuation after "Instruction:"; None unless all three fields are there."""
    text = "Instruction:" + text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.split(r"\n\s*Example \d+", text, maxsplit=1)[0]
    match = _FIELDS.match(text.strip())
    if match is None:
        return None
    given = match["input"].strip()
    constraints = " ".join(match["constraints"].split())
    return CoreExample(
        " ".join(match["instruction"].split()),
        "" if given.lower() in _NONE else given,
        NO_CONSTRAINTS if constraints.lower() in _NONE else constraints,
    )


def accept_unnatural_round(
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    *,
    remaining: int,
) -> RoundOutcome:
    """One core per answer: the instruction filters, then ROUGE-L against the pool so far."""
    outcome = RoundOutcome()
    for prompt_index, completion in enumerate(completions):
        if completion.oversized:
            outcome.decisions.append(oversized_candidate(completion, prompt_index))
            continue
        core = parse_core(completion.text)
        decision = _judge_core(core, prompt_index, completion, index, options, remaining)
        if decision.accepted:
            index.add(decision.text)
            remaining -= 1
        outcome.decisions.append(decision)
    return outcome


def _judge_core(
    core: CoreExample | None,
    prompt_index: int,
    completion: Completion,
    index: RougeLIndex,
    options: GenerationOptions,
    remaining: int,
) -> CandidateDecision:
    if core is None:
        reason = (
            InstructionReason.TRUNCATED_RESPONSE
            if completion.truncated
            else InstructionReason.UNPARSEABLE
        )
        return CandidateDecision(completion.text.strip()[:500], prompt_index, reason)
    reason = filter_instruction(core.instruction, options)
    if reason is not None:
        return CandidateDecision(core.instruction, prompt_index, reason, core=core)
    reason, pool_items = pool_decision(core.instruction, index, options, remaining)
    return CandidateDecision(
        core.instruction, prompt_index, reason, core=core, pool_items=pool_items
    )


# --- step 2: the core's output --------------------------------------------------------------------

OUTPUT_STOP: tuple[str, ...] = ("\n\nInstruction:", "\nInstruction:", "\n\nExample")


def build_output_prompt(core: CoreExample) -> str:
    return (
        f"Instruction: {normalize_instruction(core.instruction)}\n"
        f"Input: {core.input or 'None'}\n"
        f"Constraints: {core.constraints}\n"
        "Output:"
    )


def judge_output(core: CoreExample, completion: Completion) -> InstanceDecision:
    """The instance filters on (input, output); a truncated answer is cut off."""
    if completion.oversized:
        rejected = ParsedInstance(core.input, excerpt(completion.text))
        return InstanceDecision(rejected, InstanceReason.OVERSIZED_RESPONSE)
    (decision,) = filter_instances(
        [ParsedInstance(core.input, completion.text.strip())],
        truncated=completion.truncated,
        max_per_task=1,
    )
    return decision


# --- step 3: reformulations -----------------------------------------------------------------------


def build_rephrase_prompt(instruction: str, count: int) -> str:
    parts = [REPHRASE_HEADER.format(count=count)]
    for task, rephrasings in REPHRASE_EXAMPLES:
        listed = "\n".join(f"{n}. {text}" for n, text in enumerate(rephrasings[:count], 1))
        parts.append(f"Task: {task}\nRephrasings:\n{listed}")
    parts.append(f"Task: {normalize_instruction(instruction)}\nRephrasings:\n1.")
    return "\n\n".join(parts)


def rephrase_stop() -> tuple[str, ...]:
    return ("\n\nTask:", "\nTask:", "\n\n")


def parse_rephrasings(text: str, count: int) -> list[str]:
    """The numbered rephrasings after "1.", at most `count`."""
    return parse_instruction_completion(text, first_number=1)[:count]


@dataclass(frozen=True, slots=True)
class Reformulation:
    text: str
    reason: InstructionReason | None
    max_rouge: float | None = None
    nearest: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def judge_reformulations(
    core_instruction: str, texts: Sequence[str], options: GenerationOptions
) -> list[Reformulation]:
    """The instruction filters, then ROUGE-L among the core's reformulations; a plain copy of
    the core is a near-duplicate (it adds nothing)."""
    tokenize = TOKENIZERS[options.dedupe_tokenizer]
    siblings = RougeLIndex(tokenizer=tokenize)
    core_tokens = tokenize(core_instruction)
    decided = []
    for text in texts:
        reason = filter_instruction(text, options)
        if reason is not None:
            decided.append(Reformulation(text, reason))
            continue
        if tokenize(text) == core_tokens:
            decided.append(
                Reformulation(text, InstructionReason.NEAR_DUPLICATE, 1.0, core_instruction)
            )
            continue
        match = siblings.best(text) if len(siblings) else None
        if match is not None and match.score > options.rouge_threshold:
            nearest = siblings.text(match.item) if match.item is not None else None
            decided.append(
                Reformulation(text, InstructionReason.NEAR_DUPLICATE, match.score, nearest)
            )
            continue
        siblings.add(text)
        nearest = siblings.text(match.item) if match and match.item is not None else None
        decided.append(Reformulation(text, None, match.score if match else None, nearest))
    return decided
