"""Recipes: validation, dataset parsing with line numbers, and build_mixture's exact counts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.selfinstruct.formats import ExportFormat
from app.selfinstruct.parsing import parse_inversion_completion
from app.selfinstruct.prompts import build_inversion_prompt
from app.selfinstruct.recipes import (
    DatasetFileError,
    Recipe,
    RecipeError,
    build_mixture,
    parse_dataset,
    render_plain_text,
)


def _tasks(n: int, *, per_task: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "instruction": f"Task {i // per_task}",
            "input": f"in {i}",
            "output": f"out {i}",
            "score": -i,
        }
        for i in range(n)
    ]


def test_recipe_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="exactly one of path, job_id or dataset_id"):
        Recipe.model_validate({"sources": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="duplicate name"):
        Recipe.model_validate({"sources": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]})
    with pytest.raises(ValidationError, match=r"weights: unknown source\(s\) \['b'\]"):
        Recipe.model_validate({"sources": [{"name": "a", "path": "x"}], "weights": {"b": 1}})
    with pytest.raises(ValidationError, match=r"stage2\.sources"):
        Recipe.model_validate(
            {"sources": [{"name": "a", "path": "x"}], "stage2": {"sources": ["z"]}}
        )


def test_parse_dataset_reports_each_bad_line() -> None:
    data = b'{"instruction": "a", "output": "b"}\n\nnot json\n{"instruction": "c", "output": ""}\n'
    with pytest.raises(DatasetFileError) as caught:
        parse_dataset(data, "instructions")
    assert [(e.line, e.message) for e in caught.value.errors] == [
        (3, "invalid JSON (Expecting value)"),
        (4, "'output' must be a non-empty string"),
    ]
    assert str(caught.value).startswith("line 3: invalid JSON")
    with pytest.raises(DatasetFileError, match="no records"):
        parse_dataset(b"\n\n", "text")
    with pytest.raises(DatasetFileError, match="not UTF-8"):
        parse_dataset(b"\xff\xfe\x00", "text")


def test_parse_dataset_text_lines_and_sharegpt_dialogues() -> None:
    assert parse_dataset(b'plain one\n{"text": "json two"}\n', "text") == [
        {"text": "plain one"},
        {"text": "json two"},
    ]
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    assert parse_dataset(json.dumps(sharegpt).encode(), "chat") == [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ]


def test_plain_text_takes_the_shape_of_each_format() -> None:
    assert render_plain_text("doc", ExportFormat.ALPACA) == {
        "instruction": "",
        "input": "",
        "output": "doc",
    }
    assert render_plain_text("doc", ExportFormat.PROMPT_COMPLETION) == {
        "prompt": "",
        "completion": "doc",
    }
    assert render_plain_text("doc", ExportFormat.SHAREGPT)["conversations"][0]["value"] == "doc"


def test_build_mixture_counts_caps_and_determinism() -> None:
    recipe = Recipe.model_validate(
        {
            "seed": 7,
            "sources": [
                {"name": "big", "path": "big.jsonl"},
                {"name": "small", "path": "small.jsonl"},
                {"name": "docs", "path": "docs.txt", "kind": "text"},
            ],
            "cap": 40,
            "per_instruction_cap": 2,
            "invert_fraction": 0.5,
            "invert_cap": 5,
            "plain_text_ratio": 0.25,
        }
    )
    loaded = {
        "big": _tasks(300, per_task=3),
        "small": _tasks(10),
        "docs": [{"text": f"d{i}"} for i in range(500)],
    }
    kinds = {"big": "instructions", "small": "instructions", "docs": "text"}
    mixture = build_mixture(recipe, loaded, kinds)  # type: ignore[arg-type]
    manifest = mixture.manifest
    # big: 100 tasks x 3 examples -> 2 per task = 200 -> cap 40; small: 10.
    assert manifest["counts_per_source"] == {"big": 40, "small": 10}
    (stage,) = manifest["stages"]
    assert stage["inverted"] == 5
    assert stage["plain_text"] == round(55 * 0.25 / 0.75)
    assert stage["total"] == len(mixture.stages[0]) == 55 + stage["plain_text"]
    again = build_mixture(recipe, loaded, kinds)  # type: ignore[arg-type]
    assert [e.record for e in again.stages[0]] == [e.record for e in mixture.stages[0]]


def test_llm_writer_is_used_and_falls_back_to_templates() -> None:
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "invert_fraction": 1.0, "invert_writer": "llm"}
    )
    answers = iter(["Write the question for this answer.", None] * 10)
    mixture = build_mixture(
        recipe, {"a": _tasks(6)}, {"a": "instructions"}, write_inverse=lambda _: next(answers)
    )
    assert mixture.manifest["inverted"] == 6 and mixture.manifest["inverted_by_llm"] == 3
    written = [
        e
        for e in mixture.stages[0]
        if e.record["instruction"] == "Write the question for this answer."
    ]
    assert len(written) == 3 and all(e.inverted for e in written)


def test_stage_two_orders_by_a_difficulty_field() -> None:
    recipe = Recipe.model_validate(
        {
            "sources": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
            "format": "raw",
            "stage2": {
                "sources": ["b"],
                "replay_fraction": 0.5,
                "easy_to_hard": True,
                "difficulty": "score",
            },
        }
    )
    mixture = build_mixture(
        recipe, {"a": _tasks(10), "b": _tasks(10)}, {"a": "instructions", "b": "instructions"}
    )
    second = [e.record["score"] for e in mixture.stages[1]]
    assert len(second) == 20 and second == sorted(second)
    assert mixture.manifest["stages"][1]["replayed"] == 10
    with pytest.raises(RecipeError):
        build_mixture(
            Recipe.model_validate(
                {"sources": [{"name": "b", "path": "b"}], "stage2": {"sources": ["b"]}}
            ),
            {"b": _tasks(2)},
            {"b": "instructions"},
        )


def test_inversion_prompt_and_parser() -> None:
    prompt = build_inversion_prompt("Answer  the question.")
    assert prompt.endswith("Task: Answer the question.\nReverse task:")
    assert parse_inversion_completion(" Write a question for the answer.\nTask: x") == (
        "Write a question for the answer."
    )
    assert parse_inversion_completion(" ?") is None
    assert parse_inversion_completion("Task: another one here") is None
