"""Natural Instructions, Alpaca and plain-line seeds become ordinary Self-Instruct seed tasks."""

from __future__ import annotations

import json

import pytest

from app.selfinstruct.seed_formats import SeedFormat, guess_format, to_seed_jsonl
from app.selfinstruct.seeds import SeedFileError, parse_seed_jsonl

NI_TASK = {
    "Contributors": ["someone"],
    "Categories": ["Sentiment Analysis"],
    "Definition": ["Given a product review, decide whether it is positive or negative."],
    "Positive Examples": [
        {"input": "Works great.", "output": "positive", "explanation": "Praise."},
        {"input": "Broke in a day.", "output": "negative", "explanation": "Complaint."},
    ],
    "Negative Examples": [{"input": "Fine.", "output": "good", "explanation": "Not a label."}],
    "Instances": [{"id": "t1", "input": "Love it.", "output": ["positive"]}],
}


def parse(data: bytes, fmt: SeedFormat):  # type: ignore[no-untyped-def]
    return parse_seed_jsonl(
        to_seed_jsonl(data, fmt), max_bytes=10**7, max_line_bytes=10**6, max_tasks=1000
    )


def test_natural_instructions_task_file() -> None:
    (task,) = parse(json.dumps(NI_TASK).encode(), SeedFormat.NATURAL_INSTRUCTIONS)
    assert task.instruction.startswith("Given a product review")
    assert [(i.input, i.output) for i in task.instances] == [
        ("Works great.", "positive"),
        ("Broke in a day.", "negative"),
    ]
    assert task.is_classification
    assert task.source is not None
    assert task.source["negative_examples"] == NI_TASK["Negative Examples"]
    assert task.source["explanations"] == ["Praise.", "Complaint."]


def test_natural_instructions_jsonl_of_tasks_and_errors() -> None:
    lines = (
        json.dumps(NI_TASK) + "\n" + json.dumps({**NI_TASK, "Categories": ["Summarization"]})
    ).encode()
    tasks = parse(lines, SeedFormat.NATURAL_INSTRUCTIONS)
    assert [t.is_classification for t in tasks] == [True, False]
    with pytest.raises(SeedFileError) as raised:
        parse(json.dumps({"Instances": []}).encode(), SeedFormat.NATURAL_INSTRUCTIONS)
    assert raised.value.errors[0].field == "Definition"


def test_alpaca_json_array() -> None:
    data = json.dumps(
        [
            {
                "instruction": "Give three tips for staying healthy.",
                "input": "",
                "output": "Sleep.",
            },
            {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
            {"instruction": "", "input": "", "output": "x"},
        ]
    ).encode()
    with pytest.raises(SeedFileError) as raised:
        parse(data, SeedFormat.ALPACA)
    assert raised.value.errors[0].line == 3 and raised.value.errors[0].field == "instruction"
    tasks = parse(data.replace(b'"instruction": ""', b'"instruction": "Echo."'), SeedFormat.ALPACA)
    assert [t.instances[0].input for t in tasks] == ["", "Hello", ""]


def test_plain_lines() -> None:
    tasks = parse(b"Write a haiku about rain.\n\nList three prime numbers.\n", SeedFormat.LINES)
    assert [t.instruction for t in tasks] == [
        "Write a haiku about rain.",
        "List three prime numbers.",
    ]
    assert all(t.instances == () for t in tasks)


def test_a_failed_default_parse_can_name_the_format_the_file_looks_like() -> None:
    indented_ni = json.dumps(NI_TASK, indent=2).encode()
    alpaca = json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}], indent=2)
    assert guess_format(indented_ni) == SeedFormat.NATURAL_INSTRUCTIONS
    assert guess_format((json.dumps(NI_TASK) + "\n").encode()) == SeedFormat.NATURAL_INSTRUCTIONS
    assert guess_format(alpaca.encode()) == SeedFormat.ALPACA
    assert guess_format(b"Write a haiku about rain.\nName three rivers.\n") == SeedFormat.LINES
    assert guess_format(b'{"instruction": "Say hi.", "instances": []}\n{"broken\n') is None
    assert guess_format(b"\xff\xfe") is None
