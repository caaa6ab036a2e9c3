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
from collections.abc import Iterable, Mapping
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
# A grade is the whole answer ("3", "3/3", "2 - partly right") or follows a label ("Grade: 2",
# "**Score:** 3"). A number inside other text ("Example 1", "1. Write a poem") is not a grade.
_LABEL = (
    r"[*_#\s]*(?:(?:final|overall)\s+)?(?:grade|score|rating|faithfulness)"
    r"(?:\s*\(1,\s*2,?\s*or\s*3\))?[*_\s]*"
)
_GRADE = r"[*_\s]*([1-3])(?!\d|[.,]\d)(?:\s*(?:/|out\s+of)\s*3\b)?"
_LABELLED = re.compile(rf"^{_LABEL}(?:[:=]|\bis\b){_GRADE}(?!\s*(?:/|out\s+of))", re.I)
_BARE = re.compile(
    rf"^(?:{_LABEL})?{_GRADE}[*_]*(?:\s*[.!)]?[*_]*\s*$|\s*[-\u2013\u2014:;,(]\s*\S)", re.I
)


# A judge that rejects this share of what it saw is more likely broken (wrong backend, a prompt
# its model does not follow) than right; once it has seen enough, the job's progress says so.
WARN_REJECTED_SHARE = 0.9
WARN_MIN_JUDGED = 10

# judge name -> (the reason it rejects with, what it judges), in the order they decide: the
# faithfulness judge's reason applies only to instances the answer judge passed.
_JUDGE_REJECTIONS = {
    "instruction": ("judge_dropped", "instructions"),
    "answer": ("judge_low_score", "instances"),
    "faithfulness": ("judge_unfaithful", "instances"),
}


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What a job's judges saw of its instructions or instances: `passed` came through every
    filter (for instructions, also those past the target), `rejected` counts per reason."""

    passed: int
    rejected: Mapping[str, int]


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
    """The grade 1-3 on the answer's first line, or None when that line is not a grade: a
    judge that writes an example of its own instead must keep the example, not reject it."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    match = _LABELLED.match(first) or _BARE.match(first)
    return int(match.group(1)) if match else None


def judge_warnings(
    judges: Iterable[str], instructions: Outcomes, instances: Outcomes, *, finished: bool
) -> list[str]:
    """A warning for each judge that rejected nearly all it judged, so that a job emptied by
    a judge does not look like a plain success. `finished`: warn however few it judged."""
    warnings = []
    for name in judges:
        reason, kind = _JUDGE_REJECTIONS[name]
        outcomes = instructions if kind == "instructions" else instances
        rejected = outcomes.rejected.get(reason, 0)
        judged = outcomes.passed + sum(
            outcomes.rejected.get(r, 0) for r, k in _later_judges(name) if k == kind
        )
        if not rejected or not (finished or judged >= WARN_MIN_JUDGED):
            continue
        if rejected / judged >= WARN_REJECTED_SHARE:
            warnings.append(
                f"the {name} judge rejected {rejected} of the {judged} {kind} it judged "
                f"({reason}): check that its backend answers its prompt as asked"
            )
    return warnings


def _later_judges(name: str) -> list[tuple[str, str]]:
    """The reasons and kinds of the judge `name` and of those deciding after it."""
    names = list(_JUDGE_REJECTIONS)
    return [_JUDGE_REJECTIONS[n] for n in names[names.index(name) :]]
