"""The tests' fake LLM: varied, reproducible answers with the faults the pipeline must survive."""

from __future__ import annotations

import functools
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.selfinstruct.filters import instruction_rejection
from app.selfinstruct.options import INSTRUCTION_STOP, PAPER_KEYWORD_BLACKLIST
from app.selfinstruct.parsing import (
    parse_classification_answer,
    parse_instances,
    parse_instruction_completion,
)
from app.selfinstruct.prompts import (
    build_classification_prompt,
    build_instance_prompt,
    build_instruction_prompt,
)
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.types import InstructionReason
from tests.support.fake_llm import (
    FakeLLMConfig,
    FakeLLMServer,
    apply_limits,
    input_first_answer,
    instruction_answer,
)

SHOWN = [
    "Summarize the following customer review in one sentence.",
    "Write a haiku about autumn leaves falling in the park.",
    "Give three reasons why people should learn to cook at home.",
    "Convert the temperature from Celsius to Fahrenheit.",
    "Explain the rules of chess to a beginner in simple words.",
    "Suggest a name for a new brand of sparkling water.",
    "Find the main verb in the given sentence.",
    "Describe how to make a cup of green tea.",
]
PROMPT = build_instruction_prompt(SHOWN)
REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def http() -> httpx.Client:
    """One pooled client: a new one per request would cost more than the request itself."""
    return httpx.Client(timeout=10)


def complete(server: FakeLLMServer, prompt: str, **params: Any) -> httpx.Response:
    body = {"model": "fake-model", "prompt": prompt, "max_tokens": 1024, **params}
    return http().post(f"{server.base_url}/completions", json=body)


def completion_text(server: FakeLLMServer, prompt: str, **params: Any) -> str:
    response = complete(server, prompt, **params)
    response.raise_for_status()
    return str(response.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=3, truncate_rate=0.0)) as running:
        yield running


def test_instruction_answers_are_varied_over_http(server: FakeLLMServer) -> None:
    items: set[str] = set()
    for _ in range(30):
        text = completion_text(server, PROMPT, stop=list(INSTRUCTION_STOP))
        items.update(parse_instruction_completion(text, first_number=9))
    assert len(items) > 100


def test_repeated_prompt_gets_a_new_answer(server: FakeLLMServer) -> None:
    assert completion_text(server, PROMPT) != completion_text(server, PROMPT)


def test_same_seed_and_order_reproduce_and_other_seeds_differ() -> None:
    def run(seed: int) -> list[str]:
        with FakeLLMServer(FakeLLMConfig(seed=seed)) as fake:
            return [completion_text(fake, PROMPT) for _ in range(4)]

    first = run(11)
    assert run(11) == first
    assert run(12) != first


def test_many_distinct_instructions_survive_the_rouge_filter() -> None:
    index = RougeLIndex(SHOWN)
    for attempt in range(150):
        for item in parse_instruction_completion(
            instruction_answer(PROMPT, random.Random(attempt)), first_number=9
        ):
            if not index.exceeds(item, 0.7):
                index.add(item)
    assert len(index) - len(SHOWN) > 200


def test_instruction_answers_contain_every_fault_kind() -> None:
    reasons: Counter[InstructionReason | None] = Counter()
    shown_index = RougeLIndex(SHOWN)
    near_duplicates = 0
    texts = [instruction_answer(PROMPT, random.Random(attempt)) for attempt in range(200)]
    for text in texts:
        for item in parse_instruction_completion(text, first_number=9):
            reasons[
                instruction_rejection(
                    item, min_words=4, max_words=150, keyword_blacklist=PAPER_KEYWORD_BLACKLIST
                )
            ] += 1
            near_duplicates += shown_index.exceeds(item, 0.7)
    assert {
        InstructionReason.TOO_SHORT,
        InstructionReason.BLACKLISTED_KEYWORD,
        InstructionReason.WRITE_A_PROGRAM,
        InstructionReason.STARTS_WITH_PUNCTUATION,
        InstructionReason.STARTS_WITH_NON_ASCII,
    } <= set(reasons)
    assert reasons[None] > 0.6 * sum(reasons.values())  # faults are mixed in, not dominant
    assert near_duplicates > 0
    joined = "\n".join(texts)
    assert " ." in joined  # "11 ." numbering
    assert any(text.rstrip().split("\n")[-1].rstrip(".").isdigit() for text in texts)


def test_instruction_answer_continues_the_numbering() -> None:
    text = instruction_answer(PROMPT, random.Random(5))
    assert text.startswith(" ") and not text[1].isdigit()
    assert "\n10" in text


def test_classification_prompts_get_yes_or_no(server: FakeLLMServer) -> None:
    params = {"max_tokens": 3, "stop": ["\n", "Task"]}
    yes = completion_text(
        server,
        build_classification_prompt("Classify the sentiment of the tweet as positive or negative."),
        **params,
    )
    no = completion_text(
        server, build_classification_prompt("Write a poem about the sea at night."), **params
    )
    assert (yes, no) == (" Yes", " No")
    assert parse_classification_answer(yes) and not parse_classification_answer(no)


def test_input_first_answers_parse_and_include_faults() -> None:
    task = "Summarize the following news article in two sentences."
    instances = [
        parse_instances(input_first_answer(task, random.Random(n)), is_classification=False)
        for n in range(300)
    ]
    assert all(instances)
    flat = [instance for group in instances for instance in group]
    assert any(not i.output for i in flat)
    assert any(i.input and i.input == i.output for i in flat)
    assert any(i.output.endswith(":") for i in flat)
    assert any(len(group) != len(set(group)) for group in instances)  # exact duplicates
    assert any(
        len({i.input for i in group}) < len({(i.input, i.output) for i in group})
        for group in instances
    )  # same input, different outputs
    assert {len(group) for group in instances} >= {1, 5}


def test_no_input_tasks_mostly_get_a_single_output() -> None:
    task = "Suggest five creative names for a bakery."
    answers = [input_first_answer(task, random.Random(n)) for n in range(50)]
    assert sum(answer.startswith("Output: ") for answer in answers) > 25


def test_output_first_answers_use_the_tasks_labels(server: FakeLLMServer) -> None:
    prompt = build_instance_prompt(
        "Classify the sentiment of the review as positive, negative, or neutral.",
        is_classification=True,
    )
    text = completion_text(server, prompt, stop=["Task:"])
    assert text.startswith("Class label: Positive\nSentence: ")
    labels = [i.output for i in parse_instances(text, is_classification=True)]
    assert labels == ["Positive", "Negative", "Neutral"]


def test_counts_and_requests_record_every_call() -> None:
    prompts = {
        "instructions": PROMPT,
        "classify": build_classification_prompt("Tell me a joke."),
        "instances_input_first": build_instance_prompt("Tell me a joke.", is_classification=False),
        "instances_output_first": build_instance_prompt("Is it spam?", is_classification=True),
        "unknown": "Hello there",
    }
    with FakeLLMServer() as fake:
        for prompt in prompts.values():
            complete(fake, prompt)
        http().post(
            f"{fake.base_url}/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": PROMPT}]},
        ).raise_for_status()
        assert fake.counts == Counter({**dict.fromkeys(prompts, 1), "instructions": 2})
        assert len(fake.requests) == 6 and fake.requests[-1]["messages"][0]["content"] == PROMPT


def test_response_shapes_match_openai(server: FakeLLMServer) -> None:
    reply = complete(server, PROMPT).json()
    assert reply["object"] == "text_completion" and reply["id"] and reply["created"] > 0
    assert reply["choices"][0]["index"] == 0 and reply["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    models = http().get(f"{server.base_url}/models").json()
    assert models["data"][0]["id"] == "fake-model"


def test_stop_and_max_tokens_like_a_real_server() -> None:
    assert apply_limits("a b\n\nc d", ["\n\n"], 100) == ("a b", "stop")
    assert apply_limits("one two three four", [], 2) == ("one two", "length")
    assert apply_limits("one two", ["zzz"], 2) == ("one two", "stop")


def test_truncation_rate_gives_length_finishes() -> None:
    with FakeLLMServer(FakeLLMConfig(truncate_rate=0.5)) as fake:
        finishes = Counter(
            complete(fake, PROMPT).json()["choices"][0]["finish_reason"] for _ in range(30)
        )
    assert finishes["length"] > 5 and finishes["stop"] > 5


def test_http_faults_by_rate() -> None:
    config = FakeLLMConfig(error_rate_5xx=0.3, rate_limit_rate=0.3, garbage_rate=0.5)
    with FakeLLMServer(config) as fake:
        responses = [complete(fake, PROMPT) for _ in range(40)]
    statuses = Counter(r.status_code for r in responses)
    assert statuses[200] and statuses[429] and {500, 502, 503} & set(statuses)
    assert all(r.headers["retry-after"] == "0" for r in responses if r.status_code == 429)
    texts = [r.json()["choices"][0]["text"] for r in responses if r.status_code == 200]
    assert any(text and not any(ch.isalpha() for ch in text) for text in texts)  # garbage


def test_empty_choices_and_scripted_failures() -> None:
    with FakeLLMServer(FakeLLMConfig(empty_choices_rate=1.0)) as fake:
        fake.fail_next(2, status=502)
        statuses = [complete(fake, PROMPT).status_code for _ in range(3)]
        assert statuses == [502, 502, 200]
        assert complete(fake, PROMPT).json()["choices"] == []


def test_api_key_is_required_when_configured() -> None:
    with FakeLLMServer(FakeLLMConfig(require_api_key="sk-right")) as fake:
        assert complete(fake, PROMPT).status_code == 401
        assert http().get(f"{fake.base_url}/models").status_code == 401
        ok = http().get(f"{fake.base_url}/models", headers={"Authorization": "Bearer sk-right"})
        assert ok.status_code == 200


def test_runs_as_a_separate_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tests.support.fake_llm", "--port", str(port), "--seed", "2"]
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert models.json()["data"][0]["id"] == "fake-model"
    finally:
        process.terminate()
        process.wait(timeout=10)
