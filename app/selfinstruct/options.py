"""Per-job generation options. Defaults are the Self-Instruct paper's settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from app.selfinstruct.judges import INSTANCE_FIELDS, INSTRUCTION_FIELDS, check_template
from app.selfinstruct.untrusted import JsonNumbers

PAPER_KEYWORD_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
)  # fmt: skip

INSTRUCTION_STOP: tuple[str, ...] = ("\n\n", "\n16", "16.", "16 .")
INSTANCE_STOP: tuple[str, ...] = ("Example 6", "Task:")
CLASSIFY_STOP: tuple[str, ...] = ("\n", "Task")

# The job's RNG seed is stored in a 32-bit signed integer column (jobs.rng_seed).
SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1
MAX_KEYWORDS = 1000
Keyword = Annotated[str, Field(max_length=200)]


class BalanceTargets(JsonNumbers):
    """The mix a job should produce, steered while it generates (see balance.py)."""

    model_config = ConfigDict(extra="forbid")

    classification_share: float | None = Field(
        None, ge=0.0, le=1.0, description="Target share of classification tasks."
    )
    input_share: float | None = Field(
        None, ge=0.0, le=1.0, description="Target share of tasks whose instances have an input."
    )
    max_per_verb: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Most accepted instructions per root verb (e.g. 'write').",
    )


class JudgeStep(JsonNumbers):
    """Where a judge runs and what it is asked; unset fields follow the job's backend and model."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = Field(None, max_length=100, description="Backend name for this judge.")
    model: str | None = Field(None, max_length=200, description="Model for this judge.")
    endpoint: Literal["completions", "chat"] | None = None
    prompt: str | None = Field(
        None,
        max_length=20_000,
        description="Custom prompt template; {instruction} (and {input}, {output} for the "
        "answer and faithfulness judges) are filled in. Default: ours (see judges.py).",
    )
    max_tokens: int = Field(48, ge=1, le=4096)


class InstructionJudge(JudgeStep):
    """Keep or drop each candidate instruction before dedupe admits it."""

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: str | None) -> str | None:
        if prompt is not None:
            check_template(prompt, INSTRUCTION_FIELDS)
        return prompt


class ScoreJudge(JudgeStep):
    """Grade each accepted instance 1-3; keep at or above the threshold."""

    threshold: int = Field(2, ge=1, le=3, description="Lowest grade kept.")
    max_tokens: int = Field(8, ge=1, le=4096)

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: str | None) -> str | None:
        if prompt is not None:
            check_template(prompt, INSTANCE_FIELDS)
        return prompt


class JudgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: InstructionJudge | None = Field(None, description="Instruction quality.")
    answer: ScoreJudge | None = Field(None, description="Answer quality, 1-3.")
    faithfulness: ScoreJudge | None = Field(
        None, description="Faithfulness of the output to the input (instances with an input)."
    )

    def steps(self) -> dict[str, JudgeStep]:
        named = {"instruction": self.instruction, "answer": self.answer}
        named["faithfulness"] = self.faithfulness
        return {name: step for name, step in named.items() if step is not None}


def _when(field: str, allowed: list[object], **then: object) -> dict[str, object]:
    """Schema: `field` is absent or one of `allowed`, or else every `then` field is (absent or)
    its given value."""
    otherwise = {name: {"const": value} for name, value in then.items()}
    return {"anyOf": [{"properties": {field: {"enum": allowed}}}, {"properties": otherwise}]}


# `_paper_mode_options` as JSON Schema, so the document does not allow what validation refuses.
_MODE_RULES = [
    _when("mode", ["paper", "batched"], batch_api=False, classification_only=False),
    _when("balance", [None], mode="paper"),
    _when("judges", [None], mode="paper", batch_api=False),
]


class GenerationOptions(JsonNumbers):
    """Everything that shapes a job's output; recorded with the job so a run can be explained."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": _MODE_RULES})

    backend: str | None = Field(
        None,
        max_length=100,
        description="Name of an LLM backend configured on the server (GET /v1/backends); "
        "the default backend when omitted.",
    )
    model: str | None = Field(
        None, max_length=200, description="Model name; the backend's default when omitted."
    )
    endpoint: Literal["completions", "chat"] = Field(
        "completions",
        description="completions (the paper's) or chat (prompt sent as one user message).",
    )
    seed: int | None = Field(
        None,
        ge=SEED_MIN,
        le=SEED_MAX,
        description="RNG seed for prompt sampling (a 32-bit signed integer); random when omitted.",
    )
    classification_only: StrictBool = Field(
        False, description="Generate classification tasks only, from the classification seeds."
    )

    mode: Literal["paper", "batched", "unnatural"] = Field(
        "paper",
        description="paper: the three steps of Self-Instruct; batched: each request asks for "
        "tasks_per_request complete tasks (instruction, input, output) at once, Alpaca-style; "
        "unnatural: Unnatural Instructions (core examples from 3 demonstrations, then an output "
        "for each, then `reformulations` rephrasings of each core, kept as linked examples).",
    )
    tasks_per_request: int = Field(20, ge=2, le=50, description="Batched mode: tasks asked for.")
    batched_examples: int = Field(
        3, ge=1, le=10, description="Batched mode: seed tasks shown per request."
    )
    batched_max_tokens: int = Field(3072, ge=64, le=32768, description="Batched mode: max_tokens.")

    unnatural_examples: int = Field(
        3, ge=1, le=10, description="Unnatural mode: demonstrations shown per request."
    )
    reformulations: int = Field(
        3, ge=0, le=10, description="Unnatural mode: rephrasings asked for per core example."
    )
    unnatural_max_tokens: int = Field(
        256, ge=16, le=32768, description="Unnatural mode: max_tokens of a core example."
    )

    batch_api: StrictBool = Field(
        False,
        description="Send each step's requests through the OpenAI Batch API (half the price, "
        "up to 24 h per batch) instead of one by one; same prompts and filters. A round waits "
        "for its batch, so raise requests_per_round to keep the number of rounds small.",
    )

    # Step 1: instruction bootstrap.
    prompt_instructions: int = Field(8, ge=2, le=32, description="Instructions shown per prompt.")
    machine_instructions_per_prompt: int = Field(
        2, ge=0, le=32, description="How many of them come from accepted machine instructions."
    )
    requests_per_round: int = Field(5, ge=1, le=64, description="Concurrent prompts per round.")
    rounds_in_flight: int = Field(
        32,
        ge=1,
        le=64,
        description="Rounds of step 1 sent before the oldest is back. Round r's prompts show "
        "machine instructions accepted up to round r - rounds_in_flight, and rounds are "
        "accepted in order, so a rerun repeats the job whatever the timing; 1 is the paper's "
        "loop (each round sees every earlier one). The Batch API and balanced jobs use 1.",
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.5, ge=0.0, le=1.0)
    presence_penalty: float = Field(2.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int = Field(1024, ge=16, le=32768)

    # Instruction filters.
    min_words: int = Field(4, ge=1, le=1000, description="Fewer words than this are rejected.")
    max_words: int = Field(150, ge=1, le=10000, description="More words than this are rejected.")
    keyword_blacklist: list[Keyword] = Field(
        default_factory=lambda: list(PAPER_KEYWORD_BLACKLIST),
        max_length=MAX_KEYWORDS,
        description="Instructions containing any of these words or phrases are rejected.",
    )
    dedupe_tokenizer: Literal["rouge_score", "unicode_words", "characters"] = Field(
        "rouge_score",
        description="Tokens for ROUGE-L (and word counts): rouge_score (the paper's, exact; "
        "keeps only a-z and 0-9, so it cannot compare non-Latin text), unicode_words (letters "
        "of any script), characters (one token per character for Chinese, Japanese, Thai).",
    )
    reject_non_ascii_start: StrictBool = Field(
        True, description="Reject instructions starting with a non-ASCII character (the paper's)."
    )
    rouge_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="Rejected when ROUGE-L F to any earlier text is above this.",
    )

    # Steps 2 and 3: classification and instances.
    instance_max_tokens: int = Field(350, ge=16, le=32768)
    classification_instance_max_tokens: int = Field(300, ge=16, le=32768)
    instance_temperature: float = Field(0.0, ge=0.0, le=2.0)
    instance_top_p: float = Field(0.0, ge=0.0, le=1.0)
    instance_presence_penalty: float = Field(1.5, ge=-2.0, le=2.0)
    max_instances_per_task: int = Field(5, ge=1, le=50)

    balance: BalanceTargets | None = Field(
        None,
        description="Targets for the mix, steered while sampling prompts (off: the paper's "
        "uniform sampling); the job's status shows each target against the actual share.",
    )

    judges: JudgeOptions | None = Field(
        None,
        description="LLM-judge filters, each with its own prompt, model and threshold; their "
        "tokens count in the job's budget. Paper mode, without the Batch API.",
    )

    # Safety stop: a model that never produces anything new must not loop forever.
    max_rounds_without_progress: int = Field(20, ge=1, le=10000)

    # Budgets, checked before each step (a step already sent finishes). When a token or request
    # budget is reached the job stops cleanly as succeeded, with a stopped_reason.
    max_total_tokens: int | None = Field(
        None, ge=1, le=10**15, description="Stop after this many prompt + completion tokens."
    )
    max_llm_requests: int | None = Field(
        None, ge=1, le=10**12, description="Stop after this many requests."
    )
    max_llm_errors: int = Field(
        200, ge=1, le=1_000_000, description="Fail the job after this many failed LLM requests."
    )
    response_cache: Literal["temperature_0", "all", "off"] = Field(
        "temperature_0",
        description="Answer a request identical to an earlier one of this API key's jobs "
        "(backend, model, endpoint, prompt and every sampling parameter) with the stored answer "
        "instead of sending it: temperature_0 for requests at temperature 0 only, all for every "
        "request (a rerun then repeats the sampled answers too, and a repeated prompt within a "
        "job gets the same answer), off to neither read nor store answers. Progress counts "
        "cache_hits; DELETE /v1/response-cache drops entries.",
    )

    @model_validator(mode="after")
    def _paper_mode_options(self) -> GenerationOptions:
        if self.mode == "unnatural" and (self.batch_api or self.classification_only):
            raise ValueError("mode unnatural: not available with batch_api or classification_only")
        if self.balance is not None and self.mode != "paper":
            raise ValueError(
                "balance: steers the paper mode's prompts; not available in batched mode"
            )
        if self.judges is not None and self.mode != "paper":
            raise ValueError("judges: run in the paper mode's steps; not available in batched mode")
        if self.judges is not None and self.batch_api:
            raise ValueError("judges: not available with batch_api")
        return self


def judge_options(options: GenerationOptions, step: JudgeStep) -> GenerationOptions:
    """The job's options as a judge's LLM client sees them: its own backend, model, endpoint.
    A judge on another backend does not inherit the job's model name."""
    model = step.model if step.backend is not None else (step.model or options.model)
    return options.model_copy(
        update={
            "backend": step.backend or options.backend,
            "model": model,
            "endpoint": step.endpoint or options.endpoint,
        }
    )
