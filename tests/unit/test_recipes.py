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
    with pytest.raises(ValidationError, match=r"stage2\.sources: lists every source"):
        Recipe.model_validate(
            {"sources": [{"name": "a", "path": "x"}], "stage2": {"sources": ["a"]}}
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
    assert stage["inverted"] == 5  # swapped in for 5 of the 50 examples
    assert stage["plain_text"] == round(50 * 0.25 / 0.75)
    assert stage["total"] == len(mixture.stages[0]) == 50 + stage["plain_text"]
    again = build_mixture(recipe, loaded, kinds)  # type: ignore[arg-type]
    assert [e.record for e in again.stages[0]] == [e.record for e in mixture.stages[0]]


def test_llm_writer_is_used_and_falls_back_to_templates() -> None:
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "invert_fraction": 1.0, "invert_writer": "llm"}
    )
    answers = iter(["Write the task whose answer this is.", None] * 10)
    mixture = build_mixture(
        recipe, {"a": _tasks(6)}, {"a": "instructions"}, write_inverse=lambda _: next(answers)
    )
    assert mixture.manifest["inverted"] == 6 and mixture.manifest["inverted_by_llm"] == 3
    assert mixture.manifest["inverse_fallbacks"] == {"no_answer": 3}
    written = [
        e
        for e in mixture.stages[0]
        if e.record["instruction"] == "Write the task whose answer this is."
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


def test_inversion_prompt_and_parser() -> None:
    prompt = build_inversion_prompt("Answer  the question.")
    assert prompt.endswith("Task: Answer the question.\nReverse task:")
    assert parse_inversion_completion(" Write a question for the answer.\nTask: x") == (
        "Write a question for the answer."
    )
    assert parse_inversion_completion(" ?") is None
    assert parse_inversion_completion("Task: another one here") is None
    assert parse_inversion_completion(" 12. Name three rivers in Asia.") is None


def _qa(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"e{i}",
            "instruction": f"Answer the question about animal {i}.",
            "input": f"What does animal {i} eat?",
            "output": f"Grass {i}",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_invert_fraction_is_the_share_of_inverted_records(fraction: float) -> None:
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "format": "raw", "invert_fraction": fraction}
    )
    mixture = build_mixture(recipe, {"a": _qa(100)}, {"a": "instructions"})
    records = [e.record for e in mixture.stages[0]]
    inverted = [r for r in records if r.get("inverted")]
    assert len(records) == 100 and len(inverted) == round(100 * fraction)
    assert mixture.manifest["inverted"] == len(inverted)
    # Swapped in: an inverted example's original is not in the mixture as well.
    kept = {r["id"] for r in records if not r.get("inverted")}
    assert not kept & {r["inverted_from"] for r in inverted}
    assert kept | {r["inverted_from"] for r in inverted} == {f"e{i}" for i in range(100)}


def test_only_tasks_with_an_input_are_inverted() -> None:
    tasks = _qa(10) + [{**t, "id": f"n{i}", "input": ""} for i, t in enumerate(_qa(10))]
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "format": "raw", "invert_fraction": 0.8}
    )
    mixture = build_mixture(recipe, {"a": tasks}, {"a": "instructions"})
    inverted = [e.record for e in mixture.stages[0] if e.inverted]
    assert len(mixture.stages[0]) == 20 and len(inverted) == 10  # 16 wanted, 10 can be
    assert all(r["inverted_from"].startswith("e") for r in inverted)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("The weather in Lisbon is mild all year round.", "unrelated"),
        ("Draw a picture of the animal that the answer describes.", "blacklisted_keyword"),
        ("Question it.", "too_short"),
        ("- Write a question about the animal.", "starts_with_punctuation"),
        (None, "no_answer"),
    ],
)
def test_an_llm_answer_that_fails_the_instruction_filters_falls_back_to_a_template(
    answer: str | None, reason: str
) -> None:
    recipe = Recipe.model_validate(
        {
            "sources": [{"name": "a", "path": "a"}],
            "format": "raw",
            "invert_fraction": 1.0,
            "invert_writer": "llm",
        }
    )
    mixture = build_mixture(
        recipe, {"a": _qa(4)}, {"a": "instructions"}, write_inverse=lambda _: answer
    )
    assert mixture.manifest["inverted_by_llm"] == 0
    assert mixture.manifest["inverse_fallbacks"] == {reason: 4}
    for entry in mixture.stages[0]:
        assert entry.inverted and "inverted_by" not in entry.record
        assert "Task: Answer the question about animal" in entry.record["instruction"] or (
            "Work backwards" in entry.record["instruction"]
        )


def test_a_related_llm_answer_is_used() -> None:
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "invert_fraction": 1.0, "invert_writer": "llm"}
    )
    written = "Write a question about an animal whose answer is the given text."
    mixture = build_mixture(
        recipe, {"a": _qa(3)}, {"a": "instructions"}, write_inverse=lambda _: written
    )
    assert mixture.manifest["inverted_by_llm"] == 3 and mixture.manifest["inverse_fallbacks"] == {}
    assert all(e.record["instruction"] == written for e in mixture.stages[0])


@pytest.mark.parametrize("fmt", ["raw", "alpaca", "sharegpt"])
def test_inverted_records_are_marked_where_the_format_takes_extra_keys(fmt: str) -> None:
    recipe = Recipe.model_validate(
        {"sources": [{"name": "a", "path": "a"}], "format": fmt, "invert_fraction": 0.5}
    )
    mixture = build_mixture(recipe, {"a": _qa(10)}, {"a": "instructions"})
    marks = [(e.inverted, e.record.get("inverted")) for e in mixture.stages[0]]
    assert marks.count((True, True)) == 5 and marks.count((False, None)) == 5
