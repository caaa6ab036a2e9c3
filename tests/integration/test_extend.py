"""Growing a succeeded job on the real stack: what it had stays as it was, nothing is asked of the
backend again, the new instructions are deduplicated against everything, and an extension
repeats against a deterministic backend."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rouge_score import rouge_scorer
from sqlalchemy import Engine, select

from app.models import Instance, Instruction
from tests.integration.conftest import stack_env, started_stack, upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer, prompt_kind
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = pytest.mark.integration

STEP_1 = "instructions"
STEPS_2_3 = ("classify", "instances_input_first", "instances_output_first")


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLMServer]:
    """This module's own server (not deterministic: an answer asked again would differ), so its
    request log holds this module's requests only."""
    with FakeLLMServer(FakeLLMConfig(seed=11)) as server:
        yield server


@pytest.fixture(scope="module")
def deterministic_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=5, deterministic=True)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    pg_url: str,
    broker_url: str,
    fake_llm: FakeLLMServer,
    deterministic_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("extend")
    backends = {"deterministic": {"base_url": deterministic_llm.base_url}}
    env = stack_env(pg_url, broker_url, fake_llm, tmp, SELFINSTRUCT_BACKENDS=json.dumps(backends))
    with started_stack(env, tmp) as running:
        yield running


def _prompts(llm: FakeLLMServer, kinds: tuple[str, ...]) -> list[str]:
    prompts = [str(body.get("prompt", "")) for body in list(llm.requests)]
    return [p for p in prompts if prompt_kind(p) in kinds]


def _accepted(db: Engine, job_id: str) -> dict[str, tuple[int, int, str]]:
    """The job's accepted instructions: id -> (round, slot, text)."""
    query = select(Instruction.id, Instruction.round, Instruction.slot, Instruction.text).where(
        Instruction.job_id == job_id, Instruction.accepted.is_(True)
    )
    with db.connect() as conn:
        return {str(i): (r, s, t) for i, r, s, t in conn.execute(query)}


def _instances(db: Engine, job_id: str) -> set[tuple[str, int, str, str, bool]]:
    query = select(
        Instance.instruction_id,
        Instance.position,
        Instance.input,
        Instance.output,
        Instance.accepted,
    ).where(Instance.job_id == job_id)
    with db.connect() as conn:
        return {(str(i), p, inp, out, ok) for i, p, inp, out, ok in conn.execute(query)}


def _extend(api: httpx.Client, job_id: str, num_instructions: object) -> httpx.Response:
    return api.post(f"/v1/jobs/{job_id}/extend", json={"num_instructions": num_instructions})


def test_an_extended_job_keeps_what_it_had_and_asks_nothing_again(
    api: httpx.Client,
    stack: ServiceStack,
    db: Engine,
    fake_llm: FakeLLMServer,
    default_seeds: Path,
) -> None:
    seed_set = upload(api, default_seeds)
    body = {"seed_set_id": seed_set["id"], "num_instructions": 100, "options": {"seed": 3}}
    job = api.post("/v1/jobs", json=body).json()
    first = wait_for_status(api, job["id"], timeout_s=240)
    assert first["status"] == "succeeded", stack.logs()
    accepted_before = _accepted(db, job["id"])
    instances_before = _instances(db, job["id"])
    assert len(accepted_before) == 100 and instances_before
    step_1_before = _prompts(fake_llm, (STEP_1,))
    fake_llm.reset()

    response = _extend(api, job["id"], 300)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    extended = response.json()
    assert extended["status"] == "running" and extended["num_instructions"] == 300
    assert extended["finished_at"] is None
    again = _extend(api, job["id"], 400)  # one extension at a time
    assert again.status_code == 409 and "succeeded" in again.json()["detail"], again.text

    done = wait_for_status(api, job["id"], timeout_s=480)
    assert done["status"] == "succeeded", stack.logs()
    assert done["progress"]["instructions_accepted"] == 300
    assert done["rng_seed"] == first["rng_seed"] and done["options"] == first["options"]
    assert done["progress"]["rounds_completed"] > first["progress"]["rounds_completed"]
    accepted_after = _accepted(db, job["id"])
    assert len(accepted_after) == 300
    # The first 100 are the same rows, in the same rounds and slots, with the same examples.
    assert {k: accepted_after[k] for k in accepted_before} == accepted_before
    instances_after = _instances(db, job["id"])
    old_instances = {row for row in instances_after if row[0] in accepted_before}
    assert old_instances == instances_before
    new = {k: v for k, v in accepted_after.items() if k not in accepted_before}
    assert min(r for r, _, _ in new.values()) > max(r for r, _, _ in accepted_before.values())

    # Nothing was asked again: no step-1 prompt twice, no steps 2-3 for the first 100.
    step_1_after = _prompts(fake_llm, (STEP_1,))
    assert step_1_after and len(set(step_1_after)) == len(step_1_after)
    assert not set(step_1_after) & set(step_1_before)
    old_tasks = {f"Task: {text}" for _, _, text in accepted_before.values()}
    steps_2_3 = _prompts(fake_llm, STEPS_2_3)
    assert steps_2_3 and not [p for p in steps_2_3 if any(t in p for t in old_tasks)]

    # The new instructions are deduplicated against the seeds and every other instruction (the
    # filter rejects a score above rouge_threshold, 0.7).
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = [json.loads(line)["instruction"] for line in default_seeds.read_text().splitlines()]
    texts = [text for _, _, text in accepted_after.values()]
    new_texts = [text for _, _, text in new.values()]
    for a, b in itertools.product(new_texts, [*seeds, *texts]):
        if a is not b:
            assert scorer.score(b, a)["rougeL"].fmeasure <= 0.7, (a, b)


def _examples(api: httpx.Client, job_id: str) -> Counter[tuple[str, str, str]]:
    response = api.get(f"/v1/jobs/{job_id}/examples.jsonl")
    assert response.status_code == 200
    rows = [json.loads(line) for line in response.text.splitlines()]
    return Counter((r["instruction"], r["input"], r["output"]) for r in rows)


def _run(api: httpx.Client, body: dict[str, Any], target: int) -> dict[str, Any]:
    job = wait_for_status(api, api.post("/v1/jobs", json=body).json()["id"], timeout_s=240)
    assert job["status"] == "succeeded"
    assert _extend(api, job["id"], target).status_code == 202
    return wait_for_status(api, job["id"], timeout_s=240)


def test_identical_jobs_extended_identically_give_the_same_examples(
    api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    options = {"seed": 9, "backend": "deterministic"}
    body = {"seed_set_id": seed_set["id"], "num_instructions": 20, "options": options}
    first, second = _run(api, body, 50), _run(api, body, 50)
    assert first["status"] == second["status"] == "succeeded", stack.logs()
    assert first["progress"]["instructions_accepted"] == 50
    examples = _examples(api, first["id"])
    assert sum(examples.values()) > 20 and _examples(api, second["id"]) == examples


def test_extend_errors_are_clear(
    api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:
    unknown = _extend(api, "00000000-0000-0000-0000-000000000000", 10)
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"
    assert _extend(api, "not-a-uuid", 10).status_code == 422

    seed_set = upload(api, default_seeds)
    body = {"seed_set_id": seed_set["id"], "num_instructions": 5, "options": {"seed": 1}}
    job = wait_for_status(api, api.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", stack.logs()
    for bad in (5, 3, 0, 1_000_001, "10", None):
        response = _extend(api, job["id"], bad)
        assert response.status_code == 422, (bad, response.text)
        assert "num_instructions" in response.text, response.text
    missing = api.post(f"/v1/jobs/{job['id']}/extend", json={})
    assert missing.status_code == 422 and "num_instructions" in missing.text
    with stack.client(stack.create_key("someone else")) as other:
        assert _extend(other, job["id"], 10).status_code == 404  # another key's job
    assert api.get(f"/v1/jobs/{job['id']}").json()["num_instructions"] == 5  # unchanged

    running = api.post("/v1/jobs", json={**body, "num_instructions": 5000}).json()
    conflict = _extend(api, running["id"], 6000)
    assert conflict.status_code == 409 and "only a succeeded job" in conflict.json()["detail"]
    assert api.post(f"/v1/jobs/{running['id']}/cancel").status_code == 200
    cancelled = _extend(api, running["id"], 6000)
    assert cancelled.status_code == 409 and "cancelled" in cancelled.json()["detail"]

    budget = {**body, "num_instructions": 500, "options": {"seed": 1, "max_llm_requests": 10}}
    stopped = wait_for_status(api, api.post("/v1/jobs", json=budget).json()["id"])
    assert stopped["status"] == "succeeded" and stopped["stopped_reason"], stack.logs()
    at_budget = _extend(api, stopped["id"], 1000)
    assert at_budget.status_code == 409 and "budget" in at_budget.json()["detail"]
