"""Prompt text for the three Self-Instruct steps, in our own words of the paper's formats.

The exact text is part of the behaviour (tests pin it, and the test LLM server recognises the
prompts by these header lines), so change it only on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

INSTRUCTION_HEADER = "Come up with a series of tasks:"
CLASSIFICATION_INSTRUCTION_HEADER = "Come up with a series of classification tasks, naming the possible output labels where you can:"
CLASSIFY_HEADER = (
    "Decide whether each task below is a classification task, that is, a task whose output is "
    "one of a small, finite set of labels."
)
CLASSIFY_QUESTION = "Is it classification?"
INPUT_FIRST_HEADER = (
    "Come up with examples for the following tasks. Give several examples when you can. "
    "If a task needs no extra input, write the output directly."
)
OUTPUT_FIRST_HEADER = (
    "Given a classification task and its possible class labels, write an input for each class "
    "label. If the task needs no input, just list the possible class labels."
)


def build_instruction_prompt(
    instructions: Sequence[str], *, classification_only: bool = False
) -> str:
    raise NotImplementedError


def build_classification_prompt(instruction: str) -> str:
    raise NotImplementedError


def build_instance_prompt(instruction: str, *, is_classification: bool) -> str:
    raise NotImplementedError
