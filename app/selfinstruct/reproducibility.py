"""What makes a job repeatable: a fingerprint of the prompt templates.

A job records its RNG seed, its seed set's content hash, its options (model, endpoint and
sampling parameters) and the SHA-256 of every prompt it sent. The templates that turn seeds into
prompts live in code, so the job also records this fingerprint: the hash of every kind of prompt
built from fixed sample inputs. Any change to a template's wording changes it, without anyone
having to remember to bump a version number.
"""

from __future__ import annotations

import hashlib
from functools import cache

from app.selfinstruct.batched import BatchedTask, build_batched_prompt
from app.selfinstruct.prompts import (
    build_classification_prompt,
    build_instance_prompt,
    build_instruction_prompt,
    build_inversion_prompt,
)

_SAMPLE_INSTRUCTIONS = ("Name a colour.", "Is this review positive or negative?")


@cache
def template_version() -> str:
    """Twelve hex digits identifying the current prompt templates."""
    task = BatchedTask("Name a colour.", "", "Blue.")
    prompts = [
        build_instruction_prompt(_SAMPLE_INSTRUCTIONS),
        build_instruction_prompt(_SAMPLE_INSTRUCTIONS, classification_only=True),
        build_classification_prompt(_SAMPLE_INSTRUCTIONS[0]),
        build_instance_prompt(_SAMPLE_INSTRUCTIONS[0], is_classification=False),
        build_instance_prompt(_SAMPLE_INSTRUCTIONS[1], is_classification=True),
        build_batched_prompt([task], count=2),
        build_inversion_prompt(_SAMPLE_INSTRUCTIONS[0]),
    ]
    return hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:12]
