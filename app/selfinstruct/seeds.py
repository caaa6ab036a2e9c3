"""Seed tasks in the Self-Instruct seed format: validate uploads and inline lists, hash seed sets.

Everything here works on bytes and objects so that a bad upload is explained line by line and
field by field before anything is stored.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from app.selfinstruct.types import SeedInstance, SeedTask
from app.selfinstruct.untrusted import JSONTooDeep, iter_lines, loads_bounded

MAX_INSTRUCTION_CHARS = 10_000
MAX_INSTANCE_CHARS = 20_000  # an instance's input or output (Natural Instructions' longest fit)
MAX_INSTANCES_PER_SEED = 100
MAX_SOURCE_KEYS = 100
MAX_ID_CHARS = 200  # the width of the id and name columns where seed tasks are stored
MAX_REPORTED_ERRORS = 100  # a garbage upload must not turn into a huge error response
ERRORS_IN_MESSAGE = 20


def _storable(text: str) -> str:
    """Reject text that a database or a UTF-8 export cannot hold (JSON allows both)."""
    if "\x00" in text:
        raise PydanticCustomError("nul_character", "Text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "unpaired_surrogate", "Text must not contain unpaired surrogates"
        ) from None
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank_string", "Text must not be blank")
    return text


def _storable_first(value: Any) -> Any:
    """`_storable` before the length check, which would report a surrogate less clearly."""
    return _storable(value) if isinstance(value, str) else value


# The validators' rules, also in the JSON schema so that clients (and the API fuzzer) see them:
# no NUL anywhere, and an instruction has a character other than whitespace. (Unpaired surrogates
# are refused too, but JSON Schema patterns have no way to say so.)
NO_NUL_PATTERN = r"^[^\x00]*$"
NOT_BLANK_PATTERN = r"^[^\x00]*[^\x00\s][^\x00]*$"

SeedText = Annotated[
    StrictStr,
    StringConstraints(max_length=MAX_INSTANCE_CHARS),
    BeforeValidator(_storable_first),
    Field(json_schema_extra={"pattern": NO_NUL_PATTERN}),
]
SeedLabel = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_storable),
    Field(json_schema_extra={"pattern": NO_NUL_PATTERN}),
]
SeedInstruction = Annotated[
    StrictStr,
    StringConstraints(max_length=MAX_INSTRUCTION_CHARS),
    AfterValidator(_storable),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN}),
]


class SeedInstanceModel(BaseModel):
    """One worked example of a seed task."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"input": "I loved every minute.", "output": "Positive"}]},
    )

    input: SeedText = Field(description="The task's input; empty when the instruction says it all.")
    output: SeedText = Field(description="The correct output for this input.")


class SeedTaskModel(BaseModel):
    """A human-written seed task, one line of a Self-Instruct seed file."""

    model_config = ConfigDict(
        extra="forbid",  # a misspelt field name is an error, not silently ignored
        json_schema_extra={
            "examples": [
                {
                    "id": "seed_task_0",
                    "name": "review_sentiment",
                    "instruction": "Is the sentiment of the review positive or negative?",
                    "instances": [
                        {"input": "The battery died after two days.", "output": "Negative"}
                    ],
                    "is_classification": True,
                }
            ]
        },
    )

    id: SeedLabel | None = Field(
        None, description='Unique within the set; "seed_task_<position>" when omitted.'
    )
    name: SeedLabel | None = Field(None, description="A short label; the id when omitted.")
    instruction: SeedInstruction = Field(description="What the task asks for, in natural language.")
    instances: list[SeedInstanceModel] = Field(
        default_factory=list,
        max_length=MAX_INSTANCES_PER_SEED,
        description="Worked examples (the paper gives one per task).",
    )
    is_classification: StrictBool = Field(
        False, description="Whether the output is one of a finite set of labels."
    )
    source: dict[str, Any] | None = Field(
        None,
        max_length=MAX_SOURCE_KEYS,
        description="Where the task came from, kept as is (for example a Natural Instructions "
        "task's negative examples and explanations).",
    )

    def to_seed_task(self, *, position: int | None = None) -> SeedTask:
        """The core dataclass; `position` (0-based, in the set) names a task that has no id."""
        task_id = self.id if self.id is not None else _default_id(position)
        return SeedTask(
            id=task_id,
            name=self.name if self.name is not None else task_id,
            instruction=self.instruction,
            instances=tuple(SeedInstance(i.input, i.output) for i in self.instances),
            is_classification=self.is_classification,
            source=self.source,
        )


def _default_id(position: int | None) -> str:
    if position is None:
        raise ValueError("a seed task without an id needs its position in the set")
    return f"seed_task_{position}"


@dataclass(frozen=True, slots=True)
class SeedError:
    """One problem in a seed set: where (1-based line, field path) and what."""

    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class SeedFileError(ValueError):
    """A seed set was rejected; `errors` says every reason found (up to a limit)."""

    def __init__(self, errors: Sequence[SeedError]) -> None:
        self.errors: list[SeedError] = list(errors)
        super().__init__(_describe(self.errors))


def _describe(errors: Sequence[SeedError]) -> str:
    shown = "; ".join(str(e) for e in errors[:ERRORS_IN_MESSAGE])
    hidden = len(errors) - ERRORS_IN_MESSAGE
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def parse_seed_jsonl(
    data: bytes | IO[bytes], *, max_bytes: int, max_line_bytes: int, max_tasks: int
) -> list[SeedTask]:
    """Parse a JSONL seed file (bytes, or a binary file read line by line), or raise
    SeedFileError listing every problem with its line."""
    if isinstance(data, bytes) and len(data) > max_bytes:
        raise SeedFileError([SeedError(None, None, f"larger than {max_bytes} bytes")])
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    errors: list[SeedError] = []
    tasks: list[SeedTask] = []
    first_line_of_id: dict[str, int] = {}
    task_lines = 0
    stopped_at: int | None = None
    for number, text in _lines(stream, max_line_bytes, errors):
        if len(errors) >= MAX_REPORTED_ERRORS:
            stopped_at = number
            break
        if text is None or not text.strip():
            continue
        task_lines += 1
        if task_lines > max_tasks:
            errors.append(SeedError(number, None, f"more than {max_tasks} tasks"))
            break
        task = _parse_task(text, number, position=task_lines - 1, errors=errors)
        if task is None:
            continue
        if task.id in first_line_of_id:
            message = f"duplicate id '{task.id}' (also on line {first_line_of_id[task.id]})"
            errors.append(SeedError(number, "id", message))
            continue
        first_line_of_id[task.id] = number
        tasks.append(task)
    if stream.tell() > max_bytes:
        errors = [SeedError(None, None, f"larger than {max_bytes} bytes")]
    if task_lines == 0 and not errors:
        errors.append(SeedError(None, None, "no seed tasks found"))
    if errors:
        raise SeedFileError(_capped(errors, stopped_at=stopped_at))
    return tasks


def _lines(
    stream: IO[bytes], max_line_bytes: int, errors: list[SeedError]
) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, decoded text) per line; None where the line was already reported."""
    for number, raw in iter_lines(stream, max_line_bytes):
        if raw is None:
            errors.append(SeedError(number, None, f"longer than {max_line_bytes} bytes"))
            yield number, None
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(SeedError(number, None, f"invalid UTF-8 at byte {exc.start + 1}"))
            yield number, None


def _parse_task(
    text: str, number: int, *, position: int, errors: list[SeedError]
) -> SeedTask | None:
    try:
        value = loads_bounded(text)
    except json.JSONDecodeError as exc:
        errors.append(SeedError(number, None, f"invalid JSON: {exc.msg} at column {exc.colno}"))
        return None
    except (JSONTooDeep, ValueError) as exc:  # too deep, an over-long integer or NaN/Infinity
        errors.append(SeedError(number, None, f"invalid JSON: {exc}"))
        return None
    if not isinstance(value, dict):
        errors.append(SeedError(number, None, f"expected a JSON object, got {_json_kind(value)}"))
        return None
    try:
        model = SeedTaskModel.model_validate(value)
    except ValidationError as exc:
        errors.extend(_schema_errors(exc, line=number))
        return None
    return model.to_seed_task(position=position)


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _schema_errors(exc: ValidationError, *, line: int) -> list[SeedError]:
    return [
        SeedError(line, _field_path(error["loc"]) or None, error["msg"])
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _field_path(loc: Sequence[int | str]) -> str:
    """("instances", 0, "output") -> "instances[0].output"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _capped(errors: list[SeedError], *, stopped_at: int | None = None) -> list[SeedError]:
    """At most MAX_REPORTED_ERRORS errors, then a note saying the list is incomplete."""
    if len(errors) <= MAX_REPORTED_ERRORS and stopped_at is None:
        return errors
    note = SeedError(stopped_at, None, f"stopped after {MAX_REPORTED_ERRORS} errors")
    return [*errors[:MAX_REPORTED_ERRORS], note]


def validate_seed_tasks(tasks: Sequence[SeedTaskModel]) -> list[SeedTask]:
    """Inline seed tasks (already schema-checked): assign default ids, reject duplicates."""
    if not tasks:
        raise SeedFileError([SeedError(None, "seed_tasks", "at least one seed task is required")])
    errors: list[SeedError] = []
    converted: list[SeedTask] = []
    first_position_of_id: dict[str, int] = {}
    for position, model in enumerate(tasks):
        task = model.to_seed_task(position=position)
        if task.id in first_position_of_id:
            earlier = first_position_of_id[task.id]
            message = f"duplicate id '{task.id}' (also seed_tasks[{earlier}])"
            errors.append(SeedError(None, f"seed_tasks[{position}].id", message))
            continue
        first_position_of_id[task.id] = position
        converted.append(task)
    if errors:
        raise SeedFileError(_capped(errors))
    return converted


def seed_set_hash(tasks: Sequence[SeedTask]) -> str:
    """A stable fingerprint of a seed set's content and order, to tell seed set versions apart."""
    canonical = json.dumps(
        [_canonical(task) for task in tasks],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _canonical(task: SeedTask) -> dict[str, object]:
    # Spelled out rather than asdict() so that a new dataclass field cannot change old hashes.
    return {
        "id": task.id,
        "name": task.name,
        "instruction": task.instruction,
        "instances": [{"input": i.input, "output": i.output} for i in task.instances],
        "is_classification": task.is_classification,
    }
