"""Training formats for generated examples: one pure function per format, one record each.

An example is the dict the export streams: instruction, input, output, is_classification and ids
(Unnatural-Instructions examples also carry constraints, variant and core_id). Template choice for
prompt/completion pairs is seeded by the example's id, so an export is the same every time it is
downloaded.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

Example = Mapping[str, Any]
Record = dict[str, Any]


class ExportFormat(StrEnum):
    RAW = "raw"
    ALPACA = "alpaca"
    OPENAI_CHAT = "openai_chat"
    SHAREGPT = "sharegpt"
    PROMPT_COMPLETION = "prompt_completion"


# Our own templates, in the spirit of the paper's fine-tuning prompts: several phrasings so a model
# does not learn one fixed frame. "{instruction}" and "{input}" are filled in; the completion is
# the output with a leading space.
TEMPLATES_WITH_INPUT: tuple[str, ...] = (
    "{instruction}\nInput: {input}\nOutput:",
    "{instruction}\n\n{input}\n\nAnswer:",
    "Task: {instruction}\nInput: {input}\nResponse:",
    "{instruction}\n{input}\n",
    "Instruction: {instruction}\n\nInput: {input}\n\nOutput:",
    "{input}\n\n{instruction}\nAnswer:",
    "Here is a task: {instruction}\nGiven: {input}\nResult:",
)
TEMPLATES_WITHOUT_INPUT: tuple[str, ...] = (
    "{instruction}\nOutput:",
    "{instruction}\n\nAnswer:",
    "Task: {instruction}\nResponse:",
    "{instruction}\n",
    "Instruction: {instruction}\n\nOutput:",
    "Here is a task: {instruction}\nResult:",
)


# Constraints that say nothing (Unnatural mode stores "None." for a task without any).
_NO_CONSTRAINTS = frozenset({"", "none", "none.", "n/a"})
# Where an example came from, kept in the formats whose readers take extra keys (raw, Alpaca,
# ShareGPT); the OpenAI chat and prompt/completion lines stay as their fine-tuning APIs want them.
PROVENANCE_KEYS: tuple[str, ...] = ("variant", "core_id", "inverted")


def task_text(example: Example) -> str:
    """The instruction a model trains on: with the example's constraints (e.g. "The output
    should be one of: ...") after a blank line, as Unnatural Instructions writes them, since the
    output follows that rule and a model that never saw it would learn the wrong task."""
    instruction = example["instruction"]
    constraints = str(example.get("constraints") or "").strip()
    if constraints.lower() in _NO_CONSTRAINTS:
        return instruction
    return f"{instruction.rstrip()}\n\n{constraints}"


def provenance(example: Example) -> Record:
    """The example's variant, core and inversion mark, for the formats that keep them."""
    return {key: example[key] for key in PROVENANCE_KEYS if example.get(key) is not None}


def user_message(example: Example) -> str:
    """The instruction (with its constraints), then the input (if any) after a blank line."""
    instruction, inp = task_text(example), example.get("input") or ""
    return f"{instruction}\n\n{inp}" if inp.strip() else instruction


def to_raw(example: Example, *, system_prompt: str | None = None) -> Record:
    return dict(example)


def to_alpaca(example: Example, *, system_prompt: str | None = None) -> Record:
    return {
        "instruction": task_text(example),
        "input": example.get("input") or "",
        "output": example["output"],
        **provenance(example),
    }


def to_openai_chat(example: Example, *, system_prompt: str | None = None) -> Record:
    """OpenAI's chat fine-tuning line: `messages`, optional system first, one user, one assistant."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [
        {"role": "user", "content": user_message(example)},
        {"role": "assistant", "content": example["output"]},
    ]
    return {"messages": messages}


def to_sharegpt(example: Example, *, system_prompt: str | None = None) -> Record:
    turns = [{"from": "system", "value": system_prompt}] if system_prompt else []
    turns += [
        {"from": "human", "value": user_message(example)},
        {"from": "gpt", "value": example["output"]},
    ]
    return {"conversations": turns, **provenance(example)}


def _template_rng(example: Example) -> random.Random:
    key = str(
        example.get("id") or (example["instruction"], example.get("input"), example["output"])
    )
    return random.Random(hashlib.sha256(key.encode()).digest())


def to_prompt_completion(example: Example, *, system_prompt: str | None = None) -> Record:
    inp = example.get("input") or ""
    templates = TEMPLATES_WITH_INPUT if inp.strip() else TEMPLATES_WITHOUT_INPUT
    template = _template_rng(example).choice(templates)
    prompt = template.format(instruction=task_text(example).strip(), input=inp.strip())
    if system_prompt:
        prompt = f"{system_prompt}\n\n{prompt}"
    return {"prompt": prompt, "completion": " " + example["output"].strip()}


CONVERTERS: dict[ExportFormat, Callable[..., Record]] = {
    ExportFormat.RAW: to_raw,
    ExportFormat.ALPACA: to_alpaca,
    ExportFormat.OPENAI_CHAT: to_openai_chat,
    ExportFormat.SHAREGPT: to_sharegpt,
    ExportFormat.PROMPT_COMPLETION: to_prompt_completion,
}


def convert(example: Example, fmt: ExportFormat, *, system_prompt: str | None = None) -> Record:
    return CONVERTERS[fmt](example, system_prompt=system_prompt)


def dedupe_key(record: Record) -> str:
    """Records that render to the same training text are duplicates (the paper removes them)."""
    return hashlib.sha256(repr(sorted(record.items())).encode()).hexdigest()
