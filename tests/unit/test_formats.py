"""Training formats: exact record shapes, stable template choice, OpenAI's chat line rules."""

from __future__ import annotations

from app.selfinstruct.formats import (
    TEMPLATES_WITH_INPUT,
    TEMPLATES_WITHOUT_INPUT,
    ExportFormat,
    convert,
)

WITH_INPUT = {
    "id": "a1",
    "instruction_id": "i1",
    "job_id": "j1",
    "instruction": "Translate the sentence into French.",
    "input": "Good morning.",
    "output": "Bonjour.",
    "is_classification": False,
}
NO_INPUT = {
    **WITH_INPUT,
    "id": "a2",
    "input": "",
    "instruction": "Name a prime number.",
    "output": "7",
}


def test_alpaca_and_raw() -> None:
    assert convert(WITH_INPUT, ExportFormat.ALPACA) == {
        "instruction": "Translate the sentence into French.",
        "input": "Good morning.",
        "output": "Bonjour.",
    }
    assert convert(WITH_INPUT, ExportFormat.RAW) == WITH_INPUT


def test_openai_chat_follows_the_fine_tuning_rules() -> None:
    plain = convert(NO_INPUT, ExportFormat.OPENAI_CHAT)
    assert plain == {
        "messages": [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7"},
        ]
    }
    with_system = convert(WITH_INPUT, ExportFormat.OPENAI_CHAT, system_prompt="Be brief.")
    roles = [m["role"] for m in with_system["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert (
        with_system["messages"][1]["content"]
        == "Translate the sentence into French.\n\nGood morning."
    )
    assert all(isinstance(m["content"], str) and m["content"] for m in with_system["messages"])


def test_sharegpt() -> None:
    assert convert(WITH_INPUT, ExportFormat.SHAREGPT)["conversations"] == [
        {"from": "human", "value": "Translate the sentence into French.\n\nGood morning."},
        {"from": "gpt", "value": "Bonjour."},
    ]


def test_prompt_completion_templates_are_varied_and_stable() -> None:
    first = convert(WITH_INPUT, ExportFormat.PROMPT_COMPLETION)
    assert first == convert(WITH_INPUT, ExportFormat.PROMPT_COMPLETION)
    assert first["completion"] == " Bonjour."
    assert "Good morning." in first["prompt"] and "Translate the sentence" in first["prompt"]
    prompts = {
        convert({**WITH_INPUT, "id": f"x{i}"}, ExportFormat.PROMPT_COMPLETION)["prompt"]
        for i in range(200)
    }
    assert len(prompts) == len(TEMPLATES_WITH_INPUT)
    no_input = {
        convert({**NO_INPUT, "id": f"y{i}"}, ExportFormat.PROMPT_COMPLETION)["prompt"]
        for i in range(200)
    }
    assert len(no_input) == len(TEMPLATES_WITHOUT_INPUT)
    assert all("Input" not in p and "Given" not in p for p in no_input)
