"""Mixture recipes: what to mix and how, and the pure function that builds the mixture.

The CLI (sources from files) and the API (sources from jobs and uploaded datasets) both load
records, then call `build_mixture`; neither does any mixing of its own. An optional callable
writes inverted instructions with an LLM, so this module stays free of I/O.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from app.selfinstruct.formats import ExportFormat, convert
from app.selfinstruct.mixing import (
    can_invert,
    cap_per_key,
    inverse_rejection,
    inversion_count,
    invert,
    mix,
    two_stages,
    with_plain_text,
)
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.untrusted import JsonNumbers, iter_lines, json_number, loads_bounded

SourceKind = Literal["instructions", "chat", "text"]
MAX_DATASET_LINE_BYTES = 8 * 1024 * 1024
MAX_SOURCES = 100
MAX_RECORDS = 100_000_000  # records in a mixture; positions are 32-bit integer columns
SOURCE_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
SourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=SOURCE_NAME_PATTERN)]
WeightKey = Annotated[str, Field(min_length=1, max_length=100)]  # unknown names: see below
Weight = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False), BeforeValidator(json_number)]
Record = dict[str, Any]
# Given an example, the instruction of the task that goes the other way (or None to fall back
# to a template).
InverseWriter = Callable[[Mapping[str, Any]], str | None]


def _one_origin_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The validator's "exactly one origin" rule in the JSON schema: one branch per origin, each
    requiring it to be non-null and the others null or absent; a job's examples are
    instructions."""
    origins: tuple[str, ...] = getattr(cls, "ORIGINS", ())
    branches: list[dict[str, Any]] = []
    for origin in origins:
        others = {other: {"type": "null"} for other in origins if other != origin}
        branch: dict[str, Any] = {
            "required": [origin],
            "properties": {origin: {"type": "string"}, **others},
        }
        if origin == "job_id":
            branch["properties"]["kind"] = {"enum": ["instructions", None]}
        branches.append(branch)
    schema["oneOf"] = branches


class SourceSpec(BaseModel):
    """One source: a file (CLI), a job's accepted examples, or an uploaded dataset (API)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_origin_schema)
    ORIGINS: ClassVar[tuple[str, ...]] = ("path", "job_id", "dataset_id")

    name: str = Field(min_length=1, max_length=100, pattern=SOURCE_NAME_PATTERN)
    kind: SourceKind | None = Field(
        None,
        description="instructions, chat (multi-turn dialogues) or text (plain documents); "
        "defaults to the job's or dataset's kind, or instructions for a file.",
    )
    path: str | None = Field(None, max_length=1000, description="A JSONL file (CLI only).")
    job_id: uuid.UUID | None = Field(None, description="A job's accepted examples.")
    dataset_id: uuid.UUID | None = Field(None, description="A dataset from POST /v1/datasets.")

    @model_validator(mode="after")
    def _exactly_one_origin(self) -> SourceSpec:
        given = [f for f in ("path", "job_id", "dataset_id") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {_either(self.ORIGINS)}")
        if self.job_id is not None and self.kind not in (None, "instructions"):
            raise ValueError("a job's examples are of kind instructions")
        return self


def _either(names: Sequence[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


class ApiSourceSpec(SourceSpec):
    """A source over HTTP: a job's examples or an uploaded dataset (the API reads no files)."""

    ORIGINS: ClassVar[tuple[str, ...]] = ("job_id", "dataset_id")

    path: Annotated[str | None, WithJsonSchema({"type": "null", "description": "CLI only."})] = None

    @field_validator("path")
    @classmethod
    def _no_files(cls, path: str | None) -> str | None:
        if path is not None:
            raise ValueError("the API reads jobs and datasets, not files")
        return path


class Stage2(JsonNumbers):
    """A second training stage: its own sources plus a replay of stage-1 examples."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SourceName] = Field(
        min_length=1, max_length=MAX_SOURCES, description="Names of sources used in stage 2 only."
    )
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="Share of stage 2 replayed.")
    easy_to_hard: StrictBool = Field(
        False, description="Order each stage by `difficulty`, easy first."
    )
    difficulty: str = Field(
        "length",
        min_length=1,
        max_length=100,
        description="`length` (words in the record) or the name of a numeric field of the source "
        "records, such as a score from a judge; records without it go last.",
    )


class Recipe(JsonNumbers):
    """What to mix and how; every choice is recorded in the manifest."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0, le=2**53, description="RNG seed (exact in JSON doubles).")
    format: ExportFormat = ExportFormat.ALPACA
    system_prompt: str | None = Field(None, max_length=4000)
    sources: list[SourceSpec] = Field(min_length=1, max_length=MAX_SOURCES)
    total: int | None = Field(None, ge=1, le=MAX_RECORDS)
    cap: int | None = Field(None, ge=1, le=MAX_RECORDS, description="Per-source cap K.")
    temperature: float = Field(1.0, gt=0, le=1e9)
    weights: dict[WeightKey, Weight] | None = Field(
        None, max_length=MAX_SOURCES, description="Fixed weight per source name."
    )
    per_instruction_cap: int | None = Field(None, ge=1, le=MAX_RECORDS)
    invert_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the mixed examples swapped for their inversion (tasks with an "
        "input only).",
    )
    invert_cap: int | None = Field(
        None, ge=0, le=MAX_RECORDS, description="At most this many inverted examples."
    )
    invert_writer: Literal["template", "llm"] = Field(
        "template", description="Who writes an inverted task's instruction."
    )
    llm: GenerationOptions = Field(
        default_factory=GenerationOptions,
        description="Backend, model, endpoint and temperature for invert_writer: llm.",
    )
    plain_text_ratio: float = Field(0.0, ge=0, lt=1)
    stage2: Stage2 | None = None

    @model_validator(mode="after")
    def _names_resolve(self) -> Recipe:
        names = [s.name for s in self.sources]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"sources: duplicate name(s) {duplicated}")
        for label, wanted in (
            ("weights", set(self.weights or {})),
            ("stage2.sources", set(self.stage2.sources if self.stage2 else [])),
        ):
            unknown = wanted - set(names)
            if unknown:
                raise ValueError(f"{label}: unknown source(s) {sorted(unknown)}")
        if self.stage2 is not None and set(names) <= set(self.stage2.sources):
            raise ValueError(
                "stage2.sources: lists every source, so stage 1 would have none; "
                "keep at least one source out of stage2"
            )
        return self


class ApiRecipe(Recipe):
    """A recipe sent to the API: its sources are jobs and uploaded datasets."""

    sources: list[ApiSourceSpec] = Field(min_length=1, max_length=MAX_SOURCES)


@dataclass
class Entry:
    """A record of the mixture with where it came from (kept out of the record itself)."""

    source: str
    record: Record
    inverted: bool = False
    plain_text: bool = False


@dataclass
class Mixture:
    stages: list[list[Entry]]
    manifest: dict[str, Any] = field(default_factory=dict)


class RecipeError(ValueError):
    """The recipe does not fit the records it was given (e.g. a source of the wrong kind)."""


def validate_record(record: Any, kind: SourceKind) -> str | None:
    """Why a record cannot be a `kind` source record, or None when it can."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    if kind == "instructions":
        for name in ("instruction", "output"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                return f"'{name}' must be a non-empty string"
        if not isinstance(record.get("input", ""), str | None):
            return "'input' must be a string"
    elif kind == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return "needs a non-empty 'messages' list"
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return f"messages[{n}]: needs a string 'content'"
            if message.get("role") not in ("system", "user", "assistant"):
                return f"messages[{n}]: 'role' must be system, user or assistant"
    elif not isinstance(record.get("text"), str) or not record["text"].strip():
        return "'text' must be a non-empty string"
    return None


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant"}


def normalise_record(record: Any, kind: SourceKind) -> Any:
    """Accept ShareGPT `conversations` for chat sources by turning them into OpenAI messages."""
    if kind == "chat" and isinstance(record, dict) and "messages" not in record:
        turns = record.get("conversations")
        if isinstance(turns, list) and all(isinstance(t, dict) for t in turns):
            messages = [
                {
                    "role": _SHAREGPT_ROLES.get(str(t.get("from")), t.get("from")),
                    "content": t.get("value"),
                }
                for t in turns
            ]
            return {
                **{k: v for k, v in record.items() if k != "conversations"},
                "messages": messages,
            }
    return record


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


class DatasetFileError(ValueError):
    """A dataset file with bad lines; every bad line (up to a limit) is reported."""

    def __init__(self, errors: Sequence[LineError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"line {first.line}: {first.message}{more}")


def parse_dataset(
    data: bytes, kind: SourceKind, *, max_records: int = 1_000_000, max_errors: int = 20
) -> list[Record]:
    """JSONL records of a kind; a text dataset may also hold one plain document per line."""
    return list(
        iter_dataset(io.BytesIO(data), kind, max_records=max_records, max_errors=max_errors)
    )


def iter_dataset(
    stream: IO[bytes],
    kind: SourceKind,
    *,
    max_records: int = 1_000_000,
    max_errors: int = 20,
    max_line_bytes: int = MAX_DATASET_LINE_BYTES,
) -> Iterator[Record]:
    """`parse_dataset` line by line, in the memory of one line: records are yielded as they are
    read, until the first bad line; the bad lines (up to `max_errors`) are raised at the end as
    DatasetFileError, so a consumer that stores records must roll them back then."""
    errors: list[LineError] = []
    count = 0
    for number, line in iter_lines(stream, max_line_bytes):
        outcome = _dataset_line(number, line, kind, max_line_bytes)
        if isinstance(outcome, LineError):
            errors.append(outcome)
        elif outcome is not None:
            count += 1
            if count > max_records:
                errors.append(LineError(number, f"more than {max_records} records"))
            elif not errors:
                yield outcome
        if len(errors) >= max_errors or count > max_records:
            break
    if errors:
        raise DatasetFileError(errors)
    if not count:
        raise DatasetFileError([LineError(1, "no records")])


def _dataset_line(
    number: int, raw: bytes | None, kind: SourceKind, max_line_bytes: int
) -> Record | LineError | None:
    """The record on one line, why it is not one, or None for a blank line."""
    if raw is None:
        return LineError(number, f"longer than {max_line_bytes} bytes")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(number, f"not UTF-8 text ({exc.reason})")
    if not line.strip():
        return None
    if kind == "text" and not line.lstrip().startswith("{"):
        return {"text": line}
    try:
        record = normalise_record(loads_bounded(line), kind)
    except json.JSONDecodeError as exc:
        return LineError(number, f"invalid JSON ({exc.msg})")
    except ValueError as exc:  # nested too deep, NaN/Infinity, an over-long integer
        return LineError(number, f"invalid JSON ({exc})")
    problem = validate_record(record, kind) or _unencodable(line, record)
    return LineError(number, problem) if problem else record


def _unencodable(line: str, record: Record) -> str | None:
    """A \\u escape can make a lone surrogate, which no UTF-8 export or hash can encode."""
    if "\\u" not in line:
        return None
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "text must not contain unpaired surrogates"
    return None


def render_plain_text(text: str, fmt: ExportFormat) -> Record:
    """A pre-training document in the shape of the chosen format, so one loader reads both."""
    if fmt == ExportFormat.ALPACA:
        return {"instruction": "", "input": "", "output": text}
    if fmt == ExportFormat.PROMPT_COMPLETION:
        return {"prompt": "", "completion": text}
    if fmt == ExportFormat.OPENAI_CHAT:
        return {"messages": [{"role": "assistant", "content": text}]}
    if fmt == ExportFormat.SHAREGPT:
        return {"conversations": [{"from": "gpt", "value": text}]}
    return {"text": text, "plain_text": True}


def render_chat(record: Mapping[str, Any], fmt: ExportFormat) -> Record:
    """A dialogue in the chosen format: ShareGPT turns or OpenAI messages (the others keep the
    OpenAI layout, which has no single-turn equivalent)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if fmt == ExportFormat.SHAREGPT:
        speaker = {"system": "system", "user": "human", "assistant": "gpt"}
        return {
            "conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in messages]
        }
    return {"messages": messages}


def _difficulty(stage2: Stage2) -> Callable[[Entry], float]:
    if stage2.difficulty == "length":
        return lambda e: float(len(json.dumps(e.record, ensure_ascii=False).split()))

    def score(entry: Entry) -> float:
        value = entry.record.get(stage2.difficulty)
        return float(value) if isinstance(value, int | float) else float("inf")

    return score


def build_mixture(
    recipe: Recipe,
    loaded: Mapping[str, Sequence[Record]],
    kinds: Mapping[str, SourceKind],
    *,
    write_inverse: InverseWriter | None = None,
) -> Mixture:
    """Stage 1: mixable sources by their rates (after the per-instruction cap), inverted tasks,
    plain text at its ratio. Stage 2 (optional): its own sources plus a replay of stage 1."""
    rng = random.Random(recipe.seed)
    later = set(recipe.stage2.sources) if recipe.stage2 else set()
    now = {n: list(r) for n, r in loaded.items() if n not in later}
    mixable = {n: r for n, r in now.items() if kinds[n] != "text"}
    texts = [r for n, records in now.items() if kinds[n] == "text" for r in records]
    if recipe.per_instruction_cap:
        cap = recipe.per_instruction_cap
        for name, records in mixable.items():
            if kinds[name] == "instructions":
                mixable[name] = cap_per_key(records, lambda x: x["instruction"], cap, rng)
    if not mixable and not texts:
        raise RecipeError("stage 1 has no sources (all of them are in stage2.sources)")
    chosen, counts = mix(
        mixable,
        rng,
        total=recipe.total,
        cap=recipe.cap,
        temperature=recipe.temperature,
        weights=recipe.weights,
    )
    entries = [Entry(name, _render(recipe, kinds[name], r)) for name, r in chosen]
    inversions = _inversions(recipe, chosen, kinds, rng, write_inverse)
    for position, entry in inversions.entries.items():
        entries[position] = entry  # in place of the example it turns around
    text_entries = [
        Entry(n, render_plain_text(r["text"], recipe.format), plain_text=True)
        for n, records in now.items()
        if kinds[n] == "text"
        for r in records
    ]
    first = with_plain_text(entries, text_entries, recipe.plain_text_ratio, rng)
    stages = [first]
    if recipe.stage2 is not None:
        second = [
            Entry(name, _render(recipe, kinds[name], r), plain_text=kinds[name] == "text")
            for name in recipe.stage2.sources
            for r in loaded[name]
        ]
        difficulty = _difficulty(recipe.stage2) if recipe.stage2.easy_to_hard else None
        stages = list(
            two_stages(first, second, recipe.stage2.replay_fraction, rng, difficulty=difficulty)
        )
    manifest = _manifest(recipe, stages, counts, chosen, kinds, inversions)
    return Mixture(stages=stages, manifest=manifest)


def _render(recipe: Recipe, kind: SourceKind, record: Mapping[str, Any]) -> Record:
    if kind == "instructions":
        return convert(record, recipe.format, system_prompt=recipe.system_prompt)
    if kind == "chat":
        return render_chat(record, recipe.format)
    return render_plain_text(record["text"], recipe.format)


@dataclass
class _Inversions:
    entries: dict[int, Entry] = field(default_factory=dict)  # by position among the chosen
    by_llm: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)  # LLM answers not used, by reason


def _inversions(
    recipe: Recipe,
    chosen: Sequence[tuple[str, Record]],
    kinds: Mapping[str, SourceKind],
    rng: random.Random,
    write_inverse: InverseWriter | None,
) -> _Inversions:
    """`invert_fraction` of the chosen examples (at most `invert_cap`, and only tasks with an
    input), picked at random, each turned around; its instruction from a template, or by the
    LLM when that passes the instruction filters (else the template stays)."""
    invertible = [
        position
        for position, (name, record) in enumerate(chosen)
        if kinds[name] == "instructions" and can_invert(record)
    ]
    count = inversion_count(len(chosen), recipe.invert_fraction, recipe.invert_cap)
    done = _Inversions()
    for position in sorted(rng.sample(invertible, min(count, len(invertible)))):
        name, record = chosen[position]
        turned = invert(record, rng)
        assert turned is not None  # it has an input
        if recipe.invert_writer == "llm" and write_inverse is not None:
            written = write_inverse(record)
            reason = (
                "no_answer"
                if not written
                else inverse_rejection(written, str(record["instruction"]), recipe.llm)
            )
            if reason is None:
                turned["instruction"] = written
                turned["inverted_by"] = "llm"
                done.by_llm += 1
            else:
                done.fallbacks[reason] += 1
        rendered = _render(recipe, "instructions", turned)
        done.entries[position] = Entry(name, rendered, inverted=True)
    return done


def _manifest(
    recipe: Recipe,
    stages: Sequence[Sequence[Entry]],
    counts: Mapping[str, int],
    chosen: Sequence[tuple[str, Record]],
    kinds: Mapping[str, SourceKind],
    inversions: _Inversions,
) -> dict[str, Any]:
    def summary(stage: Sequence[Entry]) -> dict[str, Any]:
        return {
            "total": len(stage),
            "per_source": dict(sorted(Counter(e.source for e in stage).items())),
            "inverted": sum(e.inverted for e in stage),
            "plain_text": sum(e.plain_text for e in stage),
        }

    per_task = Counter(r["instruction"] for n, r in chosen if kinds[n] == "instructions")
    stage_summaries = [summary(s) for s in stages]
    if recipe.stage2 is not None:
        own = set(recipe.stage2.sources)
        stage_summaries[1]["replayed"] = sum(e.source not in own for e in stages[1])
    return {
        "seed": recipe.seed,
        "recipe": json.loads(recipe.model_dump_json()),
        "counts_per_source": dict(sorted(counts.items())),
        "stages": stage_summaries,
        "inverted": sum(e.inverted for s in stages[:1] for e in s),
        "inverted_by_llm": inversions.by_llm,
        "inverse_fallbacks": dict(sorted(inversions.fallbacks.items())),
        "tasks": len(per_task),
        "counts_per_task": dict(per_task.most_common()),
        "total": sum(len(s) for s in stages),
    }
