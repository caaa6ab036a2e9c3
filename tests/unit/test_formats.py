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


CONSTRAINTS = 'The output should be one of: "Positive", "Negative".'
UNNATURAL_CORE = {
    **WITH_INPUT,
    "id": "u1",
    "instruction": "Decide whether the review is positive or negative.",
    "input": "Loved it.",
    "output": "Positive",
    "is_classification": True,
    "constraints": CONSTRAINTS,
    "variant": "reformulation",
    "core_id": "c1",
}
SEEN_INSTRUCTION = f"Decide whether the review is positive or negative.\n\n{CONSTRAINTS}"


def test_every_training_format_shows_the_constraints_after_the_instruction() -> None:
    alpaca = convert(UNNATURAL_CORE, ExportFormat.ALPACA)
    assert alpaca["instruction"] == SEEN_INSTRUCTION and alpaca["input"] == "Loved it."
    user = f"{SEEN_INSTRUCTION}\n\nLoved it."
    chat = convert(UNNATURAL_CORE, ExportFormat.OPENAI_CHAT)["messages"]
    assert chat[0] == {"role": "user", "content": user}
    turns = convert(UNNATURAL_CORE, ExportFormat.SHAREGPT)["conversations"]
    assert turns[0] == {"from": "human", "value": user}
    for n in range(20):  # every template
        example = {**UNNATURAL_CORE, "id": f"u{n}"}
        prompt = convert(example, ExportFormat.PROMPT_COMPLETION)["prompt"]
        assert SEEN_INSTRUCTION in prompt and "Loved it." in prompt


def test_no_constraints_leave_the_instruction_as_it_is() -> None:
    for nothing in ("None.", "none", "", None):
        example = {**UNNATURAL_CORE, "constraints": nothing}
        assert convert(example, ExportFormat.ALPACA)["instruction"] == example["instruction"]


def test_variant_and_core_stay_where_the_format_takes_extra_keys() -> None:
    for fmt in (ExportFormat.RAW, ExportFormat.ALPACA, ExportFormat.SHAREGPT):
        record = convert(UNNATURAL_CORE, fmt)
        assert (record["variant"], record["core_id"]) == ("reformulation", "c1")
    assert convert(UNNATURAL_CORE, ExportFormat.RAW)["constraints"] == CONSTRAINTS
    assert set(convert(UNNATURAL_CORE, ExportFormat.OPENAI_CHAT)) == {"messages"}
    assert set(convert(UNNATURAL_CORE, ExportFormat.PROMPT_COMPLETION)) == {"prompt", "completion"}
    # A Self-Instruct example gains no keys.
    assert set(convert(WITH_INPUT, ExportFormat.ALPACA)) == {"instruction", "input", "output"}
