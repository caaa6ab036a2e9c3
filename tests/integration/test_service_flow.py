"""The whole product on the real stack: PostgreSQL, Redis, a Celery worker, the API over HTTP."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rouge_score import rouge_scorer
from sqlalchemy import create_engine, func, select

from app.models import Instance, Instruction, SeedSet
from tests.integration.conftest import SECOND_KEY, upload
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = pytest.mark.integration

EXAMPLE_FIELDS = {
    "id",
    "instruction_id",
    "job_id",
    "instruction",
    "input",
    "output",
    "is_classification",
}


def _start(api: httpx.Client, body: dict) -> dict:  # type: ignore[type-arg]
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    return job


def _lines(api: httpx.Client, job_id: str, **params: str) -> list[dict]:  # type: ignore[type-arg]
    response = api.get(f"/v1/jobs/{job_id}/examples.jsonl", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_job_generates_exactly_the_target_with_no_near_duplicates(
    api: httpx.Client, stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    assert seed_set["task_count"] >= 40 and seed_set["classification_count"] >= 10
    job = _start(
        api, {"seed_set_id": seed_set["id"], "num_instructions": 30, "options": {"seed": 3}}
    )
    assert job["status"] == "queued"

    job = wait_for_status(api, job["id"], timeout_s=180)
    assert job["status"] == "succeeded", stack.logs()
    progress = job["progress"]
    assert progress["instructions_accepted"] == 30
    # Counted from stored instances below: an instruction whose answer held no instance that
    # parsed has none (the fake backend's faults make that happen now and then).
    assert 25 <= progress["instructions_with_instances"] <= 30
    assert progress["llm_requests"] >= 30 * 2  # classify + instances per instruction, plus rounds
    assert progress["prompt_tokens"] > 0 and progress["completion_tokens"] > 0
    assert progress["instructions_rejected"], "the fake backend always produces some rejects"
    assert job["started_at"] and job["finished_at"]

    examples = _lines(api, job["id"])
    assert len(examples) == progress["instances_accepted"] > 0
    for example in examples:
        assert set(example) == EXAMPLE_FIELDS
        assert example["job_id"] == job["id"] and example["output"].strip()

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        accepted = conn.scalars(
            select(Instruction.text).where(
                Instruction.job_id == job["id"], Instruction.accepted.is_(True)
            )
        ).all()
        with_instances = conn.scalar(
            select(func.count(func.distinct(Instance.instruction_id))).where(
                Instance.job_id == job["id"]
            )
        )
    engine.dispose()
    assert len(accepted) == 30
    assert with_instances == progress["instructions_with_instances"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = [json.loads(line)["instruction"] for line in default_seeds.read_text().splitlines()]
    for a, b in itertools.combinations(accepted, 2):
        assert scorer.score(a, b)["rougeL"].fmeasure <= 0.7, (a, b)
    for a in accepted:
        assert max(scorer.score(s, a)["rougeL"].fmeasure for s in seeds) <= 0.7, a

    rejected = [
        r for r in _lines(api, job["id"], include="rejected") if r.get("status") == "rejected"
    ]
    assert rejected and all(r["reason"] for r in rejected)
    kinds = {r["kind"] for r in rejected}
    assert "instruction" in kinds
    _check_report(api, stack, job)
    _check_metrics_and_logs(api, stack, job)


def _check_metrics_and_logs(api: httpx.Client, stack: ServiceStack, job: dict) -> None:  # type: ignore[type-arg]
    response = httpx.get(f"{stack.url}/metrics")  # aggregates only: no key needed
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True)
            found[key] = sample.value
    accepted = found['selfinstruct_instructions_total{"outcome": "accepted", "reason": ""}']
    assert accepted >= job["progress"]["instructions_accepted"]
    requests = sum(v for k, v in found.items() if k.startswith("selfinstruct_llm_requests_total"))
    assert requests >= job["progress"]["llm_requests"]
    assert found['selfinstruct_queue_depth{"queue": "selfinstruct"}'] >= 0
    assert any(k.startswith("selfinstruct_llm_latency_seconds_bucket") for k in found)
    assert any(k.startswith("selfinstruct_http_requests_total") for k in found)
    lines = [
        json.loads(line)
        for line in stack.log_tail("worker0", lines=100_000).splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("job_id") == job["id"]]
    assert any(line["message"].startswith("round 1:") for line in mine), lines[-5:]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in mine)


def _check_report(api: httpx.Client, stack: ServiceStack, job: dict) -> None:  # type: ignore[type-arg]
    """The quality report agrees with the job's own counters and with the dedupe threshold."""
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    progress = job["progress"]
    assert report["instructions"]["accepted"] == progress["instructions_accepted"] == 30
    assert report["instructions"]["by_reason"] == progress["instructions_rejected"]
    assert report["instructions"]["rejected"] == sum(progress["instructions_rejected"].values())
    assert all(report["instructions"]["examples"][r] for r in report["instructions"]["by_reason"])
    assert report["instances"]["accepted"] == progress["instances_accepted"]
    assert report["instances"]["by_reason"] == progress["instances_rejected"]
    rouge = report["rouge_l"]
    assert rouge["sample"] == rouge["of"] == 30
    assert 0 < rouge["to_nearest_seed"]["max"] <= 0.7
    assert rouge["to_nearest_earlier_instruction"]["max"] <= 0.7
    assert rouge["to_nearest_instruction"]["max"] <= 0.7
    assert (
        rouge["to_nearest_instruction"]["mean"] >= rouge["to_nearest_earlier_instruction"]["mean"]
    )
    assert report["verbs"]["parsed"] > 0 and report["verbs"]["top_verbs"][0]["count"] >= 1
    assert report["lengths"]["instruction_words"]["count"] == 30
    assert 0 <= report["classification_share"] <= 1 and 0 <= report["empty_input_share"] <= 1
    assert report["usage"]["requests"] == progress["llm_requests"]
    assert api.get(f"/v1/jobs/{job['id']}/report", params={"sample": 1}).status_code == 422
    key = api.headers["authorization"].removeprefix("Bearer ")
    cli = stack.cli("report", job["id"], "--json", "--sample", "10", key=key)
    assert json.loads(cli)["rouge_l"]["sample"] == 10
    assert "top verbs" in stack.cli("report", job["id"], key=key)


def test_the_papers_seed_file_drives_a_job_unchanged(
    api: httpx.Client, stack: ServiceStack, paper_seeds: Path
) -> None:
    seed_set = upload(api, paper_seeds)
    assert seed_set["task_count"] == 175 and seed_set["classification_count"] == 26
    job = _start(api, {"seed_set_id": seed_set["id"], "num_instructions": 8})
    job = wait_for_status(api, job["id"], timeout_s=120)
    assert job["status"] == "succeeded", stack.logs()
    assert job["progress"]["instructions_accepted"] == 8


def test_inline_seed_tasks_and_chat_endpoint(api: httpx.Client, stack: ServiceStack) -> None:
    tasks = [
        {
            "instruction": f"Explain the main idea of topic number {i} to a curious teenager.",
            "instances": [{"input": "", "output": "An explanation."}],
        }
        for i in range(6)
    ] + [
        {
            "instruction": "Classify the review as positive or negative.",
            "is_classification": True,
            "instances": [{"input": "Great value.", "output": "Positive"}],
        }
    ]
    job = _start(
        api,
        {"seed_tasks": tasks, "num_instructions": 5, "options": {"endpoint": "chat", "seed": 1}},
    )
    job = wait_for_status(api, job["id"], timeout_s=120)
    assert job["status"] == "succeeded", stack.logs()
    assert job["options"]["endpoint"] == "chat"
    assert job["progress"]["instructions_accepted"] == 5


def test_partial_results_while_running_and_after_cancel(
    api: httpx.Client, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    job = _start(api, {"seed_set_id": seed_set["id"], "num_instructions": 5000})
    deadline = time.monotonic() + 60
    while (current := api.get(f"/v1/jobs/{job['id']}").json())["progress"][
        "instances_accepted"
    ] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert current["status"] == "running"
    partial = _lines(api, job["id"])
    assert partial and all(e["job_id"] == job["id"] for e in partial)
    response = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    time.sleep(2)
    after = api.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "cancelled"
    accepted = after["progress"]["instructions_accepted"]
    time.sleep(2)
    assert api.get(f"/v1/jobs/{job['id']}").json()["progress"]["instructions_accepted"] == accepted
    assert isinstance(_lines(api, job["id"]), list)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # idempotent


def test_jobs_are_listed_newest_first(api: httpx.Client) -> None:
    page = api.get("/v1/jobs", params={"limit": 50}).json()
    created = [j["created_at"] for j in page["items"]]
    assert created == sorted(created, reverse=True)
    assert page["total"] >= len(page["items"]) >= 1


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [
        (b'{"instruction": "Do a thing well."}\n{"instruction": 5}\n', 2, "instruction"),
        (b'{"instruction": "Do a thing well."}\nnot json\n', 2, None),
        (b'["a list"]\n', 1, None),
        (b'{"instruction": "Fine task here.", "instances": [{"input": "x"}]}\n', 1, "instances"),
        (b'{"instruction": "Fine task here."}\n{"instruction": "caf\xe9 \xff"}\n', 2, None),
        (
            b'{"id": "a", "instruction": "One task here."}\n{"id": "a", "instruction": "Two tasks."}\n',
            2,
            "id",
        ),
        (b'{"instruction": "   "}\n', 1, "instruction"),
        (b'{"instruction": "Fine task here.", "colour": "red"}\n', 1, "colour"),
        (
            b'{"instruction": "Fine task here.", "is_classification": "yes"}\n',
            1,
            "is_classification",
        ),
        (b"", 0, None),
    ],
)
def test_bad_seed_upload_names_line_and_field(
    api: httpx.Client, pg_url: str, content: bytes, line: int, field: str | None
) -> None:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(SeedSet))
    response = api.post("/v1/seed-sets", files={"file": ("seeds.jsonl", content)})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "InvalidInput"
    if line:
        first = body["errors"][0]
        assert first["line"] == line
        if field:
            assert (first["field"] or "").startswith(field), body
        assert f"line {line}" in body["detail"]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(SeedSet)) == before  # nothing stored
    engine.dispose()


def test_bad_job_requests_are_clear_4xx(api: httpx.Client) -> None:
    missing = api.post("/v1/jobs", json={"num_instructions": 5})
    assert missing.status_code == 422 and "seed_set_id" in missing.json()["detail"]
    out_of_range = api.post(
        "/v1/jobs",
        json={
            "seed_tasks": [{"instruction": "Say hello nicely."}],
            "num_instructions": 5,
            "options": {"temperature": 9},
        },
    )
    assert out_of_range.status_code == 422 and "temperature" in out_of_range.json()["detail"]
    unknown_set = api.post(
        "/v1/jobs",
        json={"seed_set_id": "00000000-0000-0000-0000-000000000000", "num_instructions": 5},
    )
    assert unknown_set.status_code == 404
    assert api.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/v1/jobs/not-a-uuid").status_code == 422
    too_many = api.post(
        "/v1/jobs",
        json={
            "seed_tasks": [{"instruction": "Say hello nicely."}],
            "num_instructions": 5,
            "options": {"max_instances_per_task": 1000, "surprise": 1},
        },
    )
    assert too_many.status_code == 422
    detail = too_many.json()["detail"]
    assert "max_instances_per_task" in detail and "surprise" in detail
    assert (
        api.get("/v1/jobs/00000000-0000-0000-0000-000000000000/examples.jsonl").status_code == 404
    )


def test_health_and_openapi(api: httpx.Client) -> None:
    health = api.get("/healthz").json()
    assert health == {"status": "ok", "database": True, "broker": True}
    spec = api.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "/v1/seed-sets" in spec["paths"]
    assert api.get("/docs").status_code == 200


def test_backends_are_chosen_by_name_and_keys_never_leak(
    api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:
    listed = api.get("/v1/backends").json()
    assert [(b["name"], b["models"]) for b in listed] == [
        ("default", []),
        ("second", ["fake-model"]),
    ]
    assert all(b["concurrency_limit"] >= 1 and b["in_flight"] >= 0 for b in listed)
    assert SECOND_KEY not in json.dumps(listed) and "127.0.0.1" not in json.dumps(listed)
    seed_set = upload(api, default_seeds)
    for options, field in [
        ({"backend": "nowhere"}, "options.backend"),
        ({"backend": "second", "model": "gpt-5"}, "options.model"),
        ({"base_url": "http://169.254.169.254/"}, "options.base_url"),
    ]:
        response = api.post(
            "/v1/jobs",
            json={"seed_set_id": seed_set["id"], "num_instructions": 2, "options": options},
        )
        assert response.status_code == 422, response.text
        assert field in response.json()["detail"]
    job = _start(
        api,
        {
            "seed_set_id": seed_set["id"],
            "num_instructions": 3,
            "options": {"backend": "second", "model": "fake-model"},
        },
    )
    job = wait_for_status(api, job["id"], timeout_s=120)
    assert job["status"] == "succeeded", stack.logs()
    assert SECOND_KEY not in json.dumps(job)
    assert SECOND_KEY not in stack.logs()


def test_natural_instructions_task_file_drives_a_job(
    api: httpx.Client, stack: ServiceStack
) -> None:
    task = {
        "Categories": ["Question Answering"],
        "Definition": ["Answer the question about the passage in one short sentence."],
        "Positive Examples": [
            {
                "input": "Passage: The sky is blue. Question: What colour is the sky?",
                "output": "Blue.",
                "explanation": "Stated.",
            }
        ],
        "Negative Examples": [],
        "Instances": [],
    }
    response = api.post(
        "/v1/seed-sets",
        files={"file": ("task123_qa.json", json.dumps(task).encode(), "application/json")},
        data={"format": "natural_instructions"},
    )
    assert response.status_code == 201, response.text
    seed_set = response.json()
    assert seed_set["task_count"] == 1
    job = _start(api, {"seed_set_id": seed_set["id"], "num_instructions": 3})
    assert wait_for_status(api, job["id"], timeout_s=120)["status"] == "succeeded", stack.logs()
    bad = api.post(
        "/v1/seed-sets",
        files={"file": ("x.json", b'{"nothing": 1}', "application/json")},
        data={"format": "natural_instructions"},
    )
    assert bad.status_code == 422 and "Definition" in bad.json()["detail"]


def test_batched_mode_stores_tasks_with_their_instance_and_reports_token_cost(
    api: httpx.Client, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    options = {"seed": 8, "mode": "batched", "requests_per_round": 2}
    job = _start(api, {"seed_set_id": seed_set["id"], "num_instructions": 25, "options": options})
    job = wait_for_status(api, job["id"], timeout_s=120)
    assert job["status"] == "succeeded", job
    progress = job["progress"]
    assert progress["instructions_accepted"] == 25
    assert progress["instructions_with_instances"] == 25
    # Each accepted task came with exactly one accepted instance, and no step 2 or 3 request.
    examples = _lines(api, job["id"])
    assert len(examples) == 25 == len({e["instruction_id"] for e in examples})
    # Rounds of 2 requests only (rounds sent but not needed near the target count too).
    assert progress["llm_requests"] % 2 == 0
    assert progress["llm_requests"] >= 2 * progress["rounds_completed"]
    rejected = progress["instructions_rejected"]
    assert rejected.get("invalid_instance", 0) + rejected.get("near_duplicate", 0) > 0
    spent = progress["prompt_tokens"] + progress["completion_tokens"]
    assert progress["tokens_per_accepted_instruction"] == round(spent / 25, 1)
