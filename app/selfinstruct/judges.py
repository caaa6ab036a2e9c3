"""LLM-judge filters: prompts and answer parsing for three optional checks.

- instruction quality, in step 1 before dedupe admits a candidate: keep or drop, with a reason;
- answer quality of each accepted instance: a score of 1 to 3, kept at or above a threshold;
- faithfulness of the output to the input, for instances with an input: 1 to 3 likewise.

The prompts are completion-style (they end where the verdict goes) so base models follow them as
well as chat models do. A judge whose answer cannot be read keeps the example and records no
score: a flaky judge must not silently empty a dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter

INSTRUCTION_JUDGE_PROMPT = """\
You review tasks written to train an AI assistant. Keep a task when it is clear, self-contained \
and can be answered in text alone; drop it when it is vague, needs a file, image, web access or \
personal information, or asks for something harmful.

Task: {instruction}

Answer Keep or Drop, then a short reason after a dash.
Verdict:"""

ANSWER_JUDGE_PROMPT = """\
You grade answers written to train an AI assistant.
3 = correct, complete and follows the task; 2 = partly correct or incomplete; 1 = wrong, off-topic \
or empty.

Task: {instruction}
Input: {input}
Answer: {output}

Grade (1, 2 or 3):"""

FAITHFULNESS_JUDGE_PROMPT = """\
You check whether an answer is faithful to its input: everything it says about the input is \
supported by the input, and it does not ignore or contradict it.
3 = fully faithful; 2 = small unsupported details; 1 = contradicts, ignores or invents.

Task: {instruction}
Input: {input}
Answer: {output}

Faithfulness (1, 2 or 3):"""

INSTRUCTION_FIELDS = frozenset({"instruction"})
INSTANCE_FIELDS = frozenset({"instruction", "input", "output"})

_VERDICT = re.compile(r"^\W*(keep|drop)\b\W*(.*)$", re.IGNORECASE | re.DOTALL)
_SCORE = re.compile(r"^\D{0,20}?([1-3])(?!\d)")


@dataclass(frozen=True, slots=True)
class InstructionVerdict:
    keep: bool
    note: str  # the judge's reason, or why its answer was not used


def placeholders(template: str) -> set[str]:
    """The {fields} a prompt template uses (ValueError on a malformed template, or on a
    conversion or format spec: "{output:>999999999}" would make a worker build a huge string)."""
    names = set()
    for _, name, spec, conversion in Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no conversion or format spec")
        names.add(name)
    return names


def check_template(template: str, allowed: frozenset[str]) -> None:
    """A custom judge prompt may use only the fields its step fills in, plainly."""
    try:
        used = placeholders(template)
    except ValueError as exc:
        raise ValueError(f"not a valid prompt template: {exc}") from exc
    unknown = sorted(used - allowed)
    if unknown or any(not name for name in used):
        named = ", ".join(f"{{{n}}}" for n in unknown) or "{}"
        raise ValueError(f"unknown placeholder {named}; use {', '.join(sorted(allowed))}")


def build_instruction_judge_prompt(instruction: str, template: str | None = None) -> str:
    return (template or INSTRUCTION_JUDGE_PROMPT).format(instruction=instruction.strip())


def build_instance_judge_prompt(
    instruction: str, input_text: str, output: str, template: str
) -> str:
    return template.format(
        instruction=instruction.strip(), input=input_text.strip() or "(none)", output=output.strip()
    )


def parse_instruction_verdict(text: str) -> InstructionVerdict:
    match = _VERDICT.match(text.strip())
    if match is None:
        return InstructionVerdict(True, "judge answer not understood; kept")
    reason = match.group(2).strip().splitlines()[0].strip() if match.group(2).strip() else ""
    return InstructionVerdict(match.group(1).lower() == "keep", reason[:500])


def parse_score(text: str) -> int | None:
    """The first grade 1-3 near the start of the answer, or None."""
    match = _SCORE.match(text.strip())
    return int(match.group(1)) if match else None
