"""Bounded input: JSON nesting, lines, numbers within their columns, sizes of lists and strings."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError

from app.schemas import JobCreate
from app.selfinstruct.options import SEED_MAX, SEED_MIN, GenerationOptions
from app.selfinstruct.recipes import ApiRecipe, DatasetFileError, iter_dataset, parse_dataset
from app.selfinstruct.seed_formats import SeedFormat, to_seed_jsonl
from app.selfinstruct.seeds import SeedFileError, parse_seed_jsonl
from app.selfinstruct.untrusted import (
    MAX_JSON_DEPTH,
    JSONTooDeep,
    exceeds_depth,
    iter_lines,
    loads_bounded,
)

DEEP = "[" * 100_000 + "]" * 100_000
SEED_LIMITS = {"max_bytes": 10**7, "max_line_bytes": 10**6, "max_tasks": 1000}
SEED_SET = "425867a0-3be5-4526-8ed6-54c34d17e953"


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def test_depth_scan_counts_brackets_outside_strings_only() -> None:
    assert not exceeds_depth(nested(MAX_JSON_DEPTH))
    assert exceeds_depth(nested(MAX_JSON_DEPTH + 1))
    assert exceeds_depth(DEEP) and exceeds_depth(DEEP.encode())
    inside_a_string = json.dumps({"text": "[" * 10_000 + '\\"' + "{" * 10_000})
    assert not exceeds_depth(inside_a_string)
    wide = json.dumps([[i] for i in range(10_000)])  # many brackets, shallow
    assert not exceeds_depth(wide)


def test_loads_bounded_refuses_before_parsing() -> None:
    with pytest.raises(JSONTooDeep, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        loads_bounded(DEEP)
    with pytest.raises(ValueError, match="NaN is not allowed"):
        loads_bounded('{"x": NaN}')
    assert loads_bounded(nested(3)) == {"a": {"a": {"a": 1}}}


def test_iter_lines_holds_one_bounded_line() -> None:
    stream = io.BytesIO(b"\xef\xbb\xbfone\r\n" + b"x" * 100 + b"\ntwo\nlast")
    assert list(iter_lines(stream, max_line_bytes=10)) == [
        (1, b"one"),
        (2, None),  # too long: reported, its rest skipped
        (3, b"two"),
        (4, b"last"),
    ]


def test_seed_line_nested_too_deep_names_the_line() -> None:
    data = b'{"instruction": "Name a colour."}\n' + DEEP.encode() + b"\n"
    with pytest.raises(SeedFileError) as caught:
        parse_seed_jsonl(io.BytesIO(data), **SEED_LIMITS)
    (error,) = caught.value.errors
    assert (error.line, error.message) == (2, "invalid JSON: nested deeper than 64 levels")


def test_alpaca_file_nested_100000_deep_is_refused() -> None:
    with pytest.raises(SeedFileError, match="nested deeper than 64 levels"):
        to_seed_jsonl(DEEP.encode(), SeedFormat.ALPACA)
    pretty = ("[\n" * 1000 + "]\n" * 1000).encode()  # one document over many lines
    with pytest.raises(SeedFileError, match="nested deeper than 64 levels"):
        to_seed_jsonl(pretty, SeedFormat.ALPACA)


def test_natural_instructions_fields_of_the_wrong_type_are_ignored() -> None:
    task = {"Definition": "Say hi.", "Positive Examples": 5, "Categories": 3}
    converted = to_seed_jsonl(json.dumps(task).encode(), SeedFormat.NATURAL_INSTRUCTIONS)
    (seed,) = parse_seed_jsonl(converted, **SEED_LIMITS)
    assert seed.instruction == "Say hi." and seed.instances == ()


def test_dataset_lines_are_checked_line_by_line() -> None:
    good = b'{"instruction": "a", "output": "b"}\n'
    data = good + DEEP.encode() + b'\n{"instruction": "a", "output": "b", "n": NaN}\n'
    data += b'{"instruction": "a", "output": "b", "n": ' + b"9" * 5000 + b"}\n"
    data += b'{"instruction": "\\ud800", "output": "b"}\n'
    with pytest.raises(DatasetFileError) as caught:
        parse_dataset(data, "instructions")
    assert [(e.line, e.message.split(" (")[0]) for e in caught.value.errors] == [
        (2, "invalid JSON"),
        (3, "invalid JSON"),
        (4, "invalid JSON"),
        (5, "text must not contain unpaired surrogates"),
    ]
    assert "nested deeper than 64 levels" in caught.value.errors[0].message


def test_dataset_records_stream_without_reading_the_whole_file() -> None:
    line = b'{"instruction": "a", "output": "b"}\n'
    stream = io.BytesIO(line * 1000)
    records = iter_dataset(stream, "instructions")
    assert next(records) == {"instruction": "a", "output": "b"}
    assert stream.tell() < len(line) * 10
    assert sum(1 for _ in records) == 999


def test_dataset_line_longer_than_the_limit_is_reported() -> None:
    stream = io.BytesIO(b'{"text": "' + b"x" * 200 + b'"}\n{"text": "ok"}\n')
    with pytest.raises(DatasetFileError, match="line 1: longer than 100 bytes"):
        list(iter_dataset(stream, "text", max_line_bytes=100))


def test_seed_fits_the_rng_seed_column() -> None:
    assert GenerationOptions(seed=SEED_MAX).seed == 2**31 - 1
    assert GenerationOptions(seed=SEED_MIN).seed == -(2**31)
    for seed in (2**31, 2**64, -(2**31) - 1):
        with pytest.raises(ValidationError, match="seed"):
            GenerationOptions(seed=seed)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"keyword_blacklist": ["x" * 201]}, "keyword_blacklist.0"),
        ({"keyword_blacklist": ["k"] * 1001}, "keyword_blacklist"),
        ({"max_total_tokens": 10**16}, "max_total_tokens"),
        ({"balance": {"max_per_verb": 10**7}}, "balance.max_per_verb"),
        ({"temperature": "0.5"}, "temperature"),
        ({"max_tokens": True}, "max_tokens"),
    ],
)
def test_options_out_of_bounds_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerationOptions.model_validate(options)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [field]


def test_integers_may_be_written_as_whole_floats() -> None:
    """JSON Schema's integer includes 3.0, so the API must take it too."""
    body = JobCreate.model_validate({"seed_set_id": SEED_SET, "num_instructions": 3.0})
    assert body.num_instructions == 3


def test_recipe_bounds_and_api_sources() -> None:
    source = {"name": "a", "job_id": SEED_SET}
    with pytest.raises(ValidationError, match="less than or equal to 100000000"):
        ApiRecipe.model_validate({"sources": [source], "cap": 10**9})
    with pytest.raises(ValidationError, match=r"weights\.a"):
        ApiRecipe.model_validate({"sources": [source], "weights": {"a": float("nan")}})
    with pytest.raises(ValidationError, match="the API reads jobs and datasets, not files"):
        ApiRecipe.model_validate({"sources": [{"name": "a", "path": "x.jsonl"}]})
    with pytest.raises(ValidationError, match="exactly one of job_id or dataset_id"):
        ApiRecipe.model_validate({"sources": [{**source, "dataset_id": SEED_SET}]})
