"""Seed-task parsing and validation, the paper's seed file, and the project's default seed set."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rouge_score import rouge_scorer

from app.data import load_default_seed_tasks
from app.selfinstruct.seeds import (
    SeedError,
    SeedFileError,
    SeedTaskModel,
    parse_seed_jsonl,
    seed_set_hash,
    validate_seed_tasks,
)
from app.selfinstruct.types import SeedInstance, SeedTask

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_SEEDS = REPO_ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
LIMITS: dict[str, int] = {"max_bytes": 100_000, "max_line_bytes": 10_000, "max_tasks": 50}
PAPER_BLACKLIST = re.compile(
    r"\b(images?|graphs?|pictures?|files?|maps?|draw|plot|go to)\b", re.IGNORECASE
)
FUZZ = settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def task(**fields: Any) -> dict[str, Any]:
    return {"instruction": "Summarise the paragraph.", **fields}


def parse(data: bytes, **limits: int) -> list[SeedTask]:
    return parse_seed_jsonl(data, **{**LIMITS, **limits})


def errors_of(data: bytes, **limits: int) -> list[SeedError]:
    with pytest.raises(SeedFileError) as caught:
        parse(data, **limits)
    return caught.value.errors


def only_error(data: bytes, **limits: int) -> SeedError:
    errors = errors_of(data, **limits)
    assert len(errors) == 1, errors
    return errors[0]


# The paper's own seed file.


def test_the_papers_seed_file_loads_unchanged() -> None:
    if not PAPER_SEEDS.exists():
        pytest.skip(f"the paper's seed file is not present next to the repository ({PAPER_SEEDS})")
    data = PAPER_SEEDS.read_bytes()
    tasks = parse_seed_jsonl(
        data, max_bytes=10 * 1024 * 1024, max_line_bytes=256 * 1024, max_tasks=10_000
    )
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    first = json.loads(data.splitlines()[0])
    assert tasks[0].id == first["id"] == "seed_task_0"
    assert tasks[0].instruction == first["instruction"]
    assert [(i.input, i.output) for i in tasks[0].instances] == [
        (i["input"], i["output"]) for i in first["instances"]
    ]


# The project's default seed set.


@pytest.fixture(scope="module")
def default_seeds() -> list[SeedTask]:
    return load_default_seed_tasks()


def test_default_seed_set_has_the_promised_mix(default_seeds: list[SeedTask]) -> None:
    without_input = [t for t in default_seeds if all(not i.input for i in t.instances)]
    assert len(default_seeds) >= 48
    assert sum(t.is_classification for t in default_seeds) >= 12
    assert 0.2 <= len(without_input) / len(default_seeds) <= 0.33
    assert all(1 <= len(t.instances) <= 2 for t in default_seeds)
    assert all(i.output.strip() for t in default_seeds for i in t.instances)


def test_default_seed_ids_and_names(default_seeds: list[SeedTask]) -> None:
    assert [t.id for t in default_seeds] == [
        f"si_seed_{n:03d}" for n in range(1, len(default_seeds) + 1)
    ]
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", t.name) for t in default_seeds)
    assert len({t.name for t in default_seeds}) == len(default_seeds)


def test_default_instructions_would_pass_the_papers_filters(
    default_seeds: list[SeedTask],
) -> None:
    for seed in default_seeds:
        text = seed.instruction
        assert 5 <= len(text.split()) <= 40, text
        assert not PAPER_BLACKLIST.search(text), text
        assert text[0].isascii() and text[0].isalnum(), text
        assert not text.lower().startswith("write a program"), text


def test_default_classification_outputs_are_labels_named_in_the_instruction(
    default_seeds: list[SeedTask],
) -> None:
    for seed in (t for t in default_seeds if t.is_classification):
        for instance in seed.instances:
            assert instance.input, seed.id
            label = re.escape(instance.output)
            assert re.search(rf"\b{label}\b", seed.instruction, re.IGNORECASE), seed.id


def test_default_instructions_are_not_near_duplicates_of_each_other(
    default_seeds: list[SeedTask],
) -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for a, b in combinations(default_seeds, 2):
        score = scorer.score(a.instruction, b.instruction)["rougeL"].fmeasure
        assert score <= 0.7, (a.id, b.id, score)


# Accepted input.


def test_a_full_task_becomes_a_seed_task() -> None:
    row = {
        "id": "t1",
        "name": "sentiment",
        "instruction": "Is the review positive or negative?",
        "instances": [{"input": "Great!", "output": "Positive"}],
        "is_classification": True,
    }
    assert parse(jsonl(row)) == [
        SeedTask(
            id="t1",
            name="sentiment",
            instruction="Is the review positive or negative?",
            instances=(SeedInstance("Great!", "Positive"),),
            is_classification=True,
        )
    ]


def test_missing_id_and_name_default_by_position_ignoring_blank_lines() -> None:
    data = b"\n" + jsonl(task(id="kept", name="named")) + b"   \n" + jsonl(task())
    tasks = parse(data)
    assert [(t.id, t.name) for t in tasks] == [("kept", "named"), ("seed_task_1", "seed_task_1")]
    assert tasks[1].instances == ()
    assert tasks[1].is_classification is False


def test_name_defaults_to_the_given_id() -> None:
    assert parse(jsonl(task(id="abc")))[0].name == "abc"


def test_bom_crlf_and_missing_final_newline_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + jsonl(task(id="a")).replace(b"\n", b"\r\n") + b'{"instruction": "x"}'
    assert [t.id for t in parse(data)] == ["a", "seed_task_1"]


def test_instruction_text_is_kept_verbatim() -> None:
    text = "  Summarise\tthe text.  "
    assert parse(jsonl(task(instruction=text)))[0].instruction == text


# Rejected input: each kind of error names its line and field.


def test_over_max_bytes_has_no_line() -> None:
    error = only_error(jsonl(task()), max_bytes=10)
    assert (error.line, error.field) == (None, None)
    assert "10 bytes" in error.message


def test_invalid_utf8_names_its_line() -> None:
    data = jsonl(task()) + b'{"instruction": "caf\xe9"}\n'
    error = only_error(data)
    assert (error.line, error.field) == (2, None)
    assert "UTF-8" in error.message


def test_an_overlong_line_names_its_line() -> None:
    data = jsonl(task(), task(instruction="x" * 200), task())
    error = only_error(data, max_line_bytes=100)
    assert (error.line, error.field) == (2, None)
    assert "100 bytes" in error.message


@pytest.mark.parametrize(
    "line",
    [b"{not json}", b'{"instruction": "x"', b'{"instruction": NaN}', b"[" * 100_000, b"9" * 5000],
    ids=["syntax", "unterminated", "nan", "deeply-nested", "huge-integer"],
)
def test_invalid_json_names_its_line(line: bytes) -> None:
    data = jsonl(task(), task()) + line + b"\n"
    error = only_error(data, max_line_bytes=200_000, max_bytes=300_000)
    assert (error.line, error.field) == (3, None)
    assert error.message.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("value", "kind"), [([], "an array"), ("x", "a string"), (3, "a number"), (None, "null")]
)
def test_json_that_is_not_an_object_is_rejected(value: object, kind: str) -> None:
    error = only_error(jsonl(value))
    assert (error.line, error.field) == (1, None)
    assert kind in error.message


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (task(instances=[{"input": "", "output": 1}]), "instances[0].output", "valid string"),
        (task(instances=[{"output": "y"}]), "instances[0].input", "Field required"),
        ({"name": "no_instruction"}, "instruction", "Field required"),
        (task(instruction=" \n "), "instruction", "blank"),
        (task(instruction="x" * 10_001), "instruction", "at most 10000 characters"),
        (task(id=7), "id", "valid string"),
        (task(id=""), "id", "at least 1 character"),
        (task(is_classification="yes"), "is_classification", "valid boolean"),
        (task(is_classification=1), "is_classification", "valid boolean"),
        (task(instuction="typo"), "instuction", "Extra inputs are not permitted"),
        (task(instances={"input": "", "output": ""}), "instances", "valid list"),
        (task(instances=[{"input": "", "output": ""}] * 101), "instances", "at most 100"),
        (task(instruction="a\x00b"), "instruction", "NUL"),
        (task(instances=[{"input": "\ud800", "output": ""}]), "instances[0].input", "surrogate"),
    ],
)
def test_schema_errors_name_line_and_field(row: dict[str, Any], field: str, message: str) -> None:
    error = only_error(jsonl(task(), row), max_line_bytes=50_000)
    assert (error.line, error.field) == (2, field)
    assert message in error.message


def test_error_text_reads_line_field_message() -> None:
    with pytest.raises(SeedFileError) as caught:
        parse(jsonl(task(), task(), task(instances=[{"input": "", "output": 1}])))
    assert (
        str(caught.value) == "line 3, field 'instances[0].output': Input should be a valid string"
    )
    assert isinstance(caught.value, ValueError)


def test_duplicate_ids_name_both_lines() -> None:
    error = only_error(jsonl(task(id="a"), task(id="b"), task(id="a")))
    assert (error.line, error.field) == (3, "id")
    assert "'a'" in error.message and "line 1" in error.message


def test_a_default_id_can_collide_with_a_given_one() -> None:
    error = only_error(jsonl(task(id="seed_task_1"), task()))
    assert (error.line, error.field) == (2, "id")


def test_more_than_max_tasks_names_the_first_extra_line() -> None:
    error = only_error(jsonl(task(), task(), task(), task()), max_tasks=2)
    assert (error.line, error.field) == (3, None)
    assert "more than 2 tasks" in error.message


@pytest.mark.parametrize("data", [b"", b"\n\n", b" \r\n\t\n", b"\xef\xbb\xbf"])
def test_no_tasks_at_all_is_an_error(data: bytes) -> None:
    error = only_error(data)
    assert (error.line, error.field) == (None, None)
    assert "no seed tasks" in error.message


def test_every_problem_is_reported_with_its_own_line() -> None:
    data = b"\n".join(
        [json.dumps(task()).encode(), b"[]", b"{oops", b"\xff", json.dumps(task(id=3)).encode()]
    )
    assert [(e.line, e.field) for e in errors_of(data)] == [
        (2, None),
        (3, None),
        (4, None),
        (5, "id"),
    ]


def test_a_flood_of_errors_is_capped_and_the_message_shows_twenty() -> None:
    with pytest.raises(SeedFileError) as caught:
        parse(b"[]\n" * 500, max_tasks=1000)
    errors = caught.value.errors
    assert len(errors) == 101
    assert (errors[-1].line, errors[-1].message) == (101, "stopped after 100 errors")
    text = str(caught.value)
    assert text.count("expected a JSON object") == 20
    assert text.endswith("and 81 more")


def test_one_line_with_hundreds_of_errors_is_capped_too() -> None:
    row = task(**{f"extra_{n}": 0 for n in range(300)})
    errors = errors_of(jsonl(row))
    assert len(errors) == 101
    assert {e.line for e in errors[:100]} == {1}
    assert (errors[-1].line, errors[-1].message) == (None, "stopped after 100 errors")


# Inline seed tasks from the API.


def test_inline_tasks_get_default_ids_by_position() -> None:
    models = [SeedTaskModel(instruction="First task here."), SeedTaskModel(instruction="Second.")]
    assert [t.id for t in validate_seed_tasks(models)] == ["seed_task_0", "seed_task_1"]


def test_inline_duplicate_ids_are_rejected_with_their_index() -> None:
    models = [SeedTaskModel(id="x", instruction="A."), SeedTaskModel(id="x", instruction="B.")]
    with pytest.raises(SeedFileError) as caught:
        validate_seed_tasks(models)
    [error] = caught.value.errors
    assert (error.line, error.field) == (None, "seed_tasks[1].id")
    assert "seed_tasks[0]" in error.message


def test_an_empty_inline_list_is_rejected() -> None:
    with pytest.raises(SeedFileError) as caught:
        validate_seed_tasks([])
    assert [(e.line, e.field) for e in caught.value.errors] == [(None, "seed_tasks")]


def test_the_model_is_strict_and_documents_itself() -> None:
    with pytest.raises(ValidationError):
        SeedTaskModel.model_validate({"instruction": "A task.", "is_classification": "yes"})
    schema = SeedTaskModel.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["examples"][0]["instruction"]
    assert all("description" in spec for spec in schema["properties"].values())
    assert schema["required"] == ["instruction"]


def test_converting_a_task_without_id_needs_its_position() -> None:
    model = SeedTaskModel(instruction="A task.")
    with pytest.raises(ValueError, match="position"):
        model.to_seed_task()
    assert model.to_seed_task(position=4).id == "seed_task_4"


# Seed set hashes.


def test_seed_set_hash_is_pinned_and_sensitive_to_content_and_order() -> None:
    tasks = parse(jsonl(task(id="a"), task(id="b", instances=[{"input": "é", "output": "x"}])))
    digest = seed_set_hash(tasks)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == "304383500f1920211178a1dfb5713ec296c23f5147abb27d096d1898212e83da"
    assert seed_set_hash(parse(jsonl(task(id="a"), task(id="b")))) != digest
    assert seed_set_hash(list(reversed(tasks))) != digest
    assert seed_set_hash(list(tasks)) == digest


# Fuzzing: any input either parses or raises SeedFileError.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.text(max_size=30))
instances = st.lists(
    st.dictionaries(st.sampled_from(["input", "output", "extra"]), field_values, max_size=3),
    max_size=3,
)
seed_like_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=8), json_values),
        "name": field_values,
        "instruction": field_values,
        "instances": st.one_of(instances, json_values),
        "is_classification": st.one_of(st.booleans(), json_values),
        "instuction": field_values,
    },
)
plausible_tasks = st.fixed_dictionaries(
    {"instruction": st.text(min_size=1, max_size=40)},
    optional={
        "id": st.sampled_from(["a", "b", "seed_task_0", "seed_task_1"]),
        "name": st.text(max_size=8),
        "instances": st.lists(
            st.fixed_dictionaries({"input": st.text(max_size=10), "output": st.text(max_size=10)}),
            max_size=2,
        ),
        "is_classification": st.booleans(),
    },
)
FUZZ_LIMITS: dict[str, int] = {"max_bytes": 4000, "max_line_bytes": 1000, "max_tasks": 4}


def parses_or_explains(data: bytes) -> None:
    try:
        tasks = parse_seed_jsonl(data, **FUZZ_LIMITS)
    except SeedFileError as exc:
        assert exc.errors
        assert all(isinstance(e, SeedError) for e in exc.errors)
        str(exc)
    else:
        assert 1 <= len(tasks) <= FUZZ_LIMITS["max_tasks"]
        assert len({t.id for t in tasks}) == len(tasks)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_seed_file_error(data: bytes) -> None:
    parses_or_explains(data)


@FUZZ
@given(st.lists(json_values, max_size=6))
def test_random_json_values_parse_or_raise_seed_file_error(values: list[object]) -> None:
    parses_or_explains(b"\n".join(json.dumps(v).encode() for v in values))


@FUZZ
@given(
    st.lists(plausible_tasks | seed_like_objects, max_size=6),
    st.sampled_from([b"\n", b"\r\n", b"\n\n"]),
)
def test_random_objects_parse_or_raise_seed_file_error(
    rows: list[dict[str, object]], separator: bytes
) -> None:
    lines = [json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass") for row in rows]
    parses_or_explains(separator.join(lines))
