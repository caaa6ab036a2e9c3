"""Batched mode: one request asks for many complete tasks (instruction, input, output) at once,
as Stanford Alpaca's generator does, instead of the paper's three steps.

It costs far fewer prompt tokens per accepted instruction (the few-shot prefix is paid once per
20 tasks, and there is no classification or instance request), at the price of the paper's
output-first treatment of classification tasks. The same instruction filters, ROUGE-L dedupe and
instance filters apply, so the two modes can be compared on equal terms.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.selfinstruct.filters import filter_instances
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.prompts import normalize_instruction
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import filter_instruction, oversized_candidate, pool_decision
from app.selfinstruct.types import (
    CandidateDecision,
    Completion,
    InstructionReason,
    ParsedInstance,
    RoundOutcome,
    SeedTask,
)

NO_INPUT = "<noinput>"
BATCHED_HEADER = (
    "Write {count} new tasks for a text-only assistant, each different from the others."
)
BATCHED_RULES = (
    "Vary the verbs, topics and kinds of task: open questions, rewriting, classification, "
    "extraction, brainstorming, reasoning, advice. Each task has an instruction of one or two "
    f'sentences, an input when the task needs one (otherwise "{NO_INPUT}"), and a correct '
    "output of at most 100 words. Nothing that needs images, audio, files or the internet."
)
_SEPARATOR = re.compile(r"(?m)^[ \t]*###[ \t]*$")
_FIELDS = re.compile(
    r"(?is)^\s*(?:\d{1,3}\s*[.)]\s*)?instruction\s*:\s*(?P<instruction>.*?)"
    r"\n\s*(?:\d{1,3}\s*[.)]\s*)?input\s*:\s*(?P<input>.*?)"
    r"\n\s*(?:\d{1,3}\s*[.)]\s*)?output\s*:\s*(?P<output>.*)$"
)


@dataclass(frozen=True, slots=True)
class BatchedTask:
    instruction: str
    input: str
    output: str


def _block(number: int, task: BatchedTask) -> str:
    return (
        f"{number}. Instruction: {normalize_instruction(task.instruction)}\n"
        f"{number}. Input:\n{task.input.strip() or NO_INPUT}\n"
        f"{number}. Output:\n{task.output.strip()}"
    )


def build_batched_prompt(examples: Sequence[BatchedTask], *, count: int) -> str:
    """Rules, numbered example tasks between ### lines, then the next number to continue."""
    parts = [BATCHED_HEADER.format(count=count), BATCHED_RULES, "", "List of tasks:"]
    for number, task in enumerate(examples, 1):
        parts += ["###", _block(number, task)]
    parts += ["###", f"{len(examples) + 1}. Instruction:"]
    return "\n".join(parts)


def batched_stop(examples: int, count: int) -> tuple[str, ...]:
    """Stop after the requested number of tasks, at the next task's number."""
    return (f"{examples + count + 1}. Instruction", f"{examples + count + 1}. instruction")


def plan_batched_round(
    seeds: Sequence[SeedTask], options: GenerationOptions, rng: random.Random
) -> list[str]:
    """One prompt per concurrent request, each showing a few seed tasks with one instance."""
    pool = [s for s in seeds if s.instances]
    prompts = []
    for _ in range(options.requests_per_round):
        shown = rng.sample(pool, min(options.batched_examples, len(pool)))
        examples = [
            BatchedTask(s.instruction, (i := rng.choice(s.instances)).input, i.output)
            for s in shown
        ]
        prompts.append(build_batched_prompt(examples, count=options.tasks_per_request))
    return prompts


def parse_batched_completion(text: str) -> list[BatchedTask | None]:
    """Tasks in the order written; None for a block that is not instruction/input/output.
    The text continues after the prompt's "N. Instruction:", so its first block has no label."""
    text = "Instruction:" + text.replace("\r\n", "\n").replace("\r", "\n")
    tasks: list[BatchedTask | None] = []
    for block in _SEPARATOR.split(text):
        if not block.strip():
            continue
        match = _FIELDS.match(block)
        if match is None:
            tasks.append(None)
            continue
        inp = match["input"].strip()
        tasks.append(
            BatchedTask(
                " ".join(match["instruction"].split()),
                "" if inp.lower().replace(" ", "") in (NO_INPUT, "<none>", "none") else inp,
                match["output"].strip(),
            )
        )
    return tasks


def accept_batched_round(
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    *,
    remaining: int,
) -> RoundOutcome:
    """Judge each task in order: the instruction filters and ROUGE-L against everything kept so
    far, then its instance. Only a truncated response's last task is lost to the truncation."""
    outcome = RoundOutcome()
    for prompt_index, completion in enumerate(completions):
        if completion.oversized:
            outcome.decisions.append(oversized_candidate(completion, prompt_index))
            continue
        tasks = parse_batched_completion(completion.text)
        for position, task in enumerate(tasks):
            cut = completion.truncated and position == len(tasks) - 1
            decision = _judge(task, prompt_index, cut, index, options, remaining)
            if decision.accepted:
                index.add(decision.text)
                remaining -= 1
            outcome.decisions.append(decision)
    return outcome


def _judge(
    task: BatchedTask | None,
    prompt_index: int,
    cut: bool,
    index: RougeLIndex,
    options: GenerationOptions,
    remaining: int,
) -> CandidateDecision:
    if cut:
        text = task.instruction if task is not None else ""
        return CandidateDecision(text, prompt_index, InstructionReason.TRUNCATED_RESPONSE)
    if task is None:
        return CandidateDecision("", prompt_index, InstructionReason.INVALID_INSTANCE)
    reason = filter_instruction(task.instruction, options)
    (instance,) = filter_instances(
        [ParsedInstance(task.input, task.output)], truncated=False, max_per_task=1
    )
    if reason is None and not instance.accepted:
        reason = InstructionReason.INVALID_INSTANCE
    if reason is not None:
        return CandidateDecision(task.instruction, prompt_index, reason, instance=instance)
    reason, pool_items = pool_decision(task.instruction, index, options, remaining)
    return CandidateDecision(
        task.instruction, prompt_index, reason, instance=instance, pool_items=pool_items
    )
