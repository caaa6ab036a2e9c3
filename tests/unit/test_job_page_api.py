"""What the dashboard's job page reads from the API (in-process app, embedded SQLite): a job's
options that differ from the defaults, and the example rows' judge grades and core/rephrasing
links, declared in the OpenAPI document; each items view keeps only the fields it has."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from app.db import session_scope
from app.models import Instance, Instruction

TASK = {
    "instruction": "Name a colour of the rainbow.",
    "instances": [{"input": "", "output": "Red."}],
}
OPTIONS = {
    "seed": 5,
    "judges": {"instruction": {}, "answer": {"threshold": 3}},
    "balance": {"max_per_verb": 4},
}


def start_job(client: TestClient, options: dict) -> dict:
    response = client.post(
        "/v1/jobs", json={"seed_tasks": [TASK], "num_instructions": 2, "options": options}
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_a_job_lists_the_options_that_differ_from_the_defaults(embedded_api: TestClient) -> None:
    job = start_job(embedded_api, {**OPTIONS, "mode": "paper", "max_words": 150})  # both defaults
    expected = {
        "seed": 5,
        "judges": {"instruction": {}, "answer": {"threshold": 3}},
        "balance": {"max_per_verb": 4},
    }
    assert job["changed_options"] == expected
    assert embedded_api.get(f"/v1/jobs/{job['id']}").json()["changed_options"] == expected
    assert start_job(embedded_api, {})["changed_options"] == {}
    schemas = embedded_api.get("/openapi.json").json()["components"]["schemas"]
    assert "changed_options" in schemas["JobRead"]["properties"]


def add_core_and_rephrasing(job_id: str) -> tuple[str, str]:
    """A core with one rephrasing, each with an accepted graded instance, and a rejected one."""
    with session_scope() as session:
        job = uuid.UUID(job_id)
        core = Instruction(job_id=job, round=1, slot=0, text="Name a fruit.", accepted=True)
        session.add(core)
        session.flush()
        rephrasing = Instruction(job_id=job, round=1, slot=0, variant=1, core_id=core.id,
                                 text="Which fruit comes to mind?", accepted=True)  # fmt: skip
        session.add(rephrasing)
        session.flush()
        for row, score in ((core, 3), (rephrasing, 2)):
            session.add(Instance(job_id=job, instruction_id=row.id, position=0, input="",
                                 output="Apple", accepted=True, answer_score=score))  # fmt: skip
        session.add(Instruction(job_id=job, round=1, slot=1, text="Draw a cat.", accepted=False,
                                reason="blacklisted_keyword"))  # fmt: skip
        return str(core.id), str(rephrasing.id)


def test_items_carry_judge_grades_and_core_links(embedded_api: TestClient) -> None:
    job = start_job(embedded_api, OPTIONS)
    core, rephrasing = add_core_and_rephrasing(job["id"])
    page = embedded_api.get(f"/v1/jobs/{job['id']}/items", params={"view": "accepted"}).json()
    assert [
        (
            i["instruction_id"],
            i["variant"],
            i["core_id"],
            i["answer_score"],
            i["faithfulness_score"],
        )
        for i in page["items"]
    ] == [(core, 0, None, 3, None), (rephrasing, 1, core, 2, None)]
    rejected = embedded_api.get(f"/v1/jobs/{job['id']}/items?view=rejected_instructions").json()
    (row,) = rejected["items"]
    assert row.keys() == {"id", "instruction", "reason", "max_rouge", "nearest"}  # no added nulls
    document = embedded_api.get("/openapi.json").json()
    answer = document["paths"]["/v1/jobs/{job_id}/items"]["get"]["responses"]["200"]
    schema = answer["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ItemPage"}
    item = document["components"]["schemas"]["ItemRead"]["properties"]
    assert {"variant", "core_id", "instruction_id", "answer_score", "faithfulness_score"} <= set(
        item
    )
