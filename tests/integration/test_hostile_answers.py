"""A backend answering with NUL bytes, lone surrogates and megabytes of text, on real PostgreSQL:
every job still completes with its target, the garbage cleaned or rejected with a reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, or_, select

from app.models import Instance, Instruction, Job, LLMCall
from app.selfinstruct.sanitize import OVERSIZED
from app.selfinstruct.types import InstanceReason, InstructionReason
from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = {  # target, options
    "paper with judges": (
        15,
        {"seed": 1, "judges": {"instruction": {}, "answer": {}, "faithfulness": {}}},
    ),
    "batched": (12, {"seed": 2, "mode": "batched"}),
    "unnatural": (8, {"seed": 3, "mode": "unnatural"}),
}


@pytest.fixture(scope="module")
def hostile_llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=51, hostile_rate=0.2, hostile_bytes=3_000_000, hostile_first=True)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def hostile_stack(
    pg_url: str,
    broker_url: str,
    hostile_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=hostile_llm.base_url,
        tmp=tmp_path_factory.mktemp("hostile"),
    ) as running:
        yield running


def test_hostile_answers_never_stop_a_job(
    hostile_stack: ServiceStack, hostile_llm: FakeLLMServer, pg_url: str, default_seeds: Path
) -> None:
    with hostile_stack.client(hostile_stack.create_key("hostile")) as client:
        seed_set = upload(client, default_seeds)
        job_ids = {}
        for name, (target, options) in JOBS.items():
            body = {"seed_set_id": seed_set["id"], "num_instructions": target, "options": options}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            job_ids[name] = response.json()["id"]
        jobs = {name: wait_for_status(client, j, timeout_s=300) for name, j in job_ids.items()}
        exports = {
            name: client.get(f"/v1/jobs/{j}/examples.jsonl").text for name, j in job_ids.items()
        }
    for name, job in jobs.items():
        assert job["status"] == "succeeded", (name, job, hostile_stack.logs())
        assert job["progress"]["instructions_accepted"] == JOBS[name][0], name
        examples = [json.loads(line) for line in exports[name].splitlines()]
        assert examples, name
        assert not any("\x00" in e["instruction"] + e["input"] + e["output"] for e in examples)

    faults = hostile_llm.counts
    assert faults["fault_nul"] and faults["fault_surrogate"] and faults["fault_huge"], faults
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        ids = list(job_ids.values())
        oversized_calls = conn.scalar(
            select(func.count()).where(LLMCall.job_id.in_(ids), LLMCall.finish_reason == OVERSIZED)
        )
        rejected = conn.scalar(
            select(func.count()).where(
                Instruction.job_id.in_(ids),
                Instruction.reason == InstructionReason.OVERSIZED_RESPONSE.value,
            )
        ) + conn.scalar(
            select(func.count()).where(
                Instance.job_id.in_(ids),
                Instance.reason == InstanceReason.OVERSIZED_RESPONSE.value,
            )
        )
        replaced = conn.scalar(
            select(func.count()).where(
                Instruction.job_id.in_(ids), Instruction.text.contains("\ufffd")
            )
        ) + conn.scalar(
            select(func.count()).where(
                Instance.job_id.in_(ids),
                or_(Instance.input.contains("\ufffd"), Instance.output.contains("\ufffd")),
            )
        )
        longest = conn.scalar(
            select(func.max(func.length(Instance.output))).where(Instance.job_id.in_(ids))
        )
        errors = conn.scalars(select(Job.error).where(Job.id.in_(ids))).all()
    engine.dispose()
    assert oversized_calls and rejected, (oversized_calls, rejected)
    assert replaced, "lone surrogates are stored as U+FFFD"
    assert longest < 100_000  # megabyte answers are cut before anything is stored
    assert errors == [None, None, None]
