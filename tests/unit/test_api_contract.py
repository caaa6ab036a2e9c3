"""The API's contract on the in-process app (embedded SQLite): the OpenAPI document declares the
errors that are sent, 405s say what is allowed, 429s and 503s say when to retry, bodies and
uploads are bounded, and an unreachable broker's address stays out of job errors."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.main import create_app
from app.migrate import upgrade_database
from app.models import Mixture
from app.services.keys import create_key, list_keys

TASK = {"instruction": "Name a colour of the rainbow."}
JOB = {"seed_tasks": [TASK], "num_instructions": 2}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SELFINSTRUCT_AUTH", "required")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv(
        "SELFINSTRUCT_BACKENDS", '{"vllm": {"base_url": "http://10.0.0.5/v1", "models": ["m1"]}}'
    )
    monkeypatch.setenv("SELFINSTRUCT_MAX_JOBS_PER_MINUTE_PER_KEY", "1")
    monkeypatch.setenv("SELFINSTRUCT_MAX_SEED_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("SELFINSTRUCT_MAX_JSON_BODY_BYTES", "100000")
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(get_settings().resolved_database_url)
    with session_scope() as session:
        token = create_key(session, "contract")[1]
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as test_client:
        yield test_client
    get_settings.cache_clear()
    reset_engine()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_the_document_declares_errorbody_and_retry_after(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "HTTPValidationError" not in str(document)
    for path, method, operation in operations(document):
        responses = operation["responses"]
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path != "/healthz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
        if path.startswith("/v1/"):
            assert {"401", "503"} <= responses.keys(), (method, path)
            assert responses["503"]["headers"]["Retry-After"]["required"] is True
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if method == "post":
            assert {"400", "413", "422"} <= responses.keys(), (method, path)
    create = document["paths"]["/v1/jobs"]["post"]["responses"]
    assert create["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}


def test_the_document_names_the_configured_backends(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    options = schemas["JobCreate"]["properties"]["options"]["allOf"][1]
    assert options["properties"]["backend"] == {"enum": ["default", "vllm", None]}
    (models,) = options["allOf"]
    assert {"properties": {"model": {"enum": ["m1", None]}}} in models["anyOf"]


def test_422_is_errorbody_naming_the_field(client: TestClient) -> None:
    response = client.get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000/items?offset=9223372036854775808"
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "ValidationError" and isinstance(body["detail"], str)
    assert body["errors"][0]["field"] == "offset"
    seed = client.post("/v1/jobs", json={**JOB, "options": {"seed": 2**64}})
    assert seed.status_code == 422 and seed.json()["errors"][0]["field"] == "options.seed"


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    for method in ("OPTIONS", "DELETE", "PUT"):
        response = client.request(method, "/v1/jobs")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST"
        assert response.json()["error"] == "MethodNotAllowed"
    assert client.request("OPTIONS", "/v1/jobs/x/cancel").headers["allow"] == "POST"


def test_429_says_when_to_retry(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.api.jobs as jobs_api

    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *_, **__: None)
    assert client.post("/v1/jobs", json=JOB).status_code == 202
    limited = client.post("/v1/jobs", json=JOB)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "60"


def test_unreachable_broker_is_a_503_without_its_address(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.api.jobs as jobs_api

    def unreachable(*_: object, **__: object) -> None:
        raise ConnectionError("Error 111 connecting to redis://10.1.2.3:6379/0")

    monkeypatch.setattr(jobs_api, "enqueue_round", unreachable)
    response = client.post("/v1/jobs", json=JOB)
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    (job,) = client.get("/v1/jobs").json()["items"]
    assert job["error"] == "could not reach the task broker (ConnectionError)"


def test_an_extension_the_broker_cannot_take_leaves_the_job_as_it_was(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.api.jobs as jobs_api
    from app.models import Job, JobStatus

    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *_, **__: None)
    job_id = client.post("/v1/jobs", json=JOB).json()["id"]
    finished_at = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope() as session:  # as if the job had run to its target
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.status, job.instructions_complete = JobStatus.SUCCEEDED, True
        job.finished_at, job.rounds_completed = finished_at, 4

    def unreachable(*_: object, **__: object) -> None:
        raise ConnectionError("Error 111 connecting to redis://10.1.2.3:6379/0")

    monkeypatch.setattr(jobs_api, "enqueue_round", unreachable)
    response = client.post(f"/v1/jobs/{job_id}/extend", json={"num_instructions": 10})
    assert response.status_code == 503 and "10.1.2.3" not in response.text
    assert response.json()["detail"] == "the task broker is unavailable; the job was not extended"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["num_instructions"]) == ("succeeded", 2)
    assert job["finished_at"].startswith("2026-01-01")

    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *args, **_: sent.append(args))
    response = client.post(f"/v1/jobs/{job_id}/extend", json={"num_instructions": 10})
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert sent == [(uuid.UUID(job_id), 5)]  # the round after the last stored one


def test_json_bodies_are_bounded(client: TestClient) -> None:
    deep = client.post(
        "/v1/jobs", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert deep.status_code == 422
    assert deep.json()["detail"] == "body: JSON nested deeper than 64 levels"
    big = client.post(
        "/v1/jobs", content=b" " * 100_001, headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and big.json() == {
        "error": "PayloadTooLarge",
        "detail": "body: larger than 100000 bytes",
    }
    streamed = client.post(
        "/v1/jobs", content=iter([b" " * 60_000] * 2), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_keyword_blacklist_entries_are_bounded(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={**JOB, "options": {"keyword_blacklist": ["x" * 5000]}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "options.keyword_blacklist.0"


def test_uploads_are_bounded_and_name_the_file(client: TestClient) -> None:
    small = client.post(
        "/v1/seed-sets", files={"file": ("s.jsonl", b'{"instruction": "Hi there you."}\n')}
    )
    assert small.status_code == 201, small.text
    large = client.post("/v1/seed-sets", files={"file": ("s.jsonl", b" " * 1001)})
    assert large.status_code == 413 and large.json()["detail"] == "file: larger than 1000 bytes"
    huge = client.post("/v1/seed-sets", files={"file": ("s.jsonl", b" " * 200_000)})
    assert huge.status_code == 413 and huge.json()["detail"].startswith("body: larger than")
    deep = client.post(
        "/v1/seed-sets", files={"file": ("a.json", b"[" * 900)}, data={"format": "alpaca"}
    )
    assert deep.status_code == 422
    assert deep.json()["detail"] == "file: line 1: invalid JSON: nested deeper than 64 levels"


def test_a_seed_file_in_another_format_says_which_format_to_pass(client: TestClient) -> None:
    ni_task = {
        "Definition": ["Decide whether the review is positive or negative."],
        "Positive Examples": [{"input": "Works great.", "output": "positive"}],
        "Instances": [{"id": "t1", "input": "Love it.", "output": ["positive"]}],
    }
    upload = json.dumps(ni_task, indent=2).encode()
    response = client.post("/v1/seed-sets", files={"file": ("task.json", upload)})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("file: this looks like a Natural Instructions task file")
    assert "format=natural_instructions" in detail
    accepted = client.post(
        "/v1/seed-sets",
        files={"file": ("task.json", upload)},
        data={"format": "natural_instructions"},
    )
    assert accepted.status_code == 201, accepted.text


def test_mixtures_are_listed_newest_first_per_owner_in_pages(client: TestClient) -> None:
    recipe = {"sources": [{"name": "a", "dataset_id": str(uuid.uuid4())}]}
    with session_scope() as session:
        (mine,) = [k for k in list_keys(session) if k.name == "contract"]
        other = create_key(session, "someone else")[0]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        owners = [mine.id, other.id, mine.id, mine.id]
        rows = [
            Mixture(recipe=recipe, owner_key_id=owner, created_at=start + timedelta(minutes=n))
            for n, owner in enumerate(owners)
        ]
        session.add_all(rows)
        session.flush()
        mine_newest_first = [str(r.id) for r in reversed(rows) if r.owner_key_id == mine.id]
    first = client.get("/v1/mixtures", params={"limit": 2})
    assert first.status_code == 200, first.text
    assert first.json()["total"] == 3
    assert [m["id"] for m in first.json()["items"]] == mine_newest_first[:2]
    rest = client.get("/v1/mixtures", params={"limit": 2, "offset": 2}).json()
    assert [m["id"] for m in rest["items"]] == mine_newest_first[2:]
    assert rest["items"][0]["status"] == "queued" and rest["offset"] == 2
    assert "get" in client.get("/openapi.json").json()["paths"]["/v1/mixtures"]


def test_a_recipe_with_every_source_in_stage2_is_a_422_naming_the_field(
    client: TestClient,
) -> None:
    dataset_id = str(uuid.uuid4())
    recipe = {
        "sources": [{"name": "chat", "dataset_id": dataset_id}],
        "stage2": {"sources": ["chat"]},
    }
    response = client.post("/v1/mixtures", json=recipe)
    assert response.status_code == 422
    assert "stage2.sources" in response.json()["detail"]


def test_dataset_upload_names_the_bad_line_and_keeps_the_hash(client: TestClient) -> None:
    lines = [b'{"instruction": "a", "output": "b"}', b'{"instruction": "c", "output": "d"}']
    created = client.post("/v1/datasets", files={"file": ("d.jsonl", b"\n".join(lines) + b"\n")})
    assert created.status_code == 201, created.text
    assert created.json()["record_count"] == 2
    # Hashed as before streaming: the records, one canonical JSON line each.
    canonical = b"".join(
        json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False).encode() + b"\n"
        for line in lines
    )
    assert created.json()["content_hash"] == hashlib.sha256(canonical).hexdigest()
    bad = client.post("/v1/datasets", files={"file": ("d.jsonl", lines[0] + b"\n" + b"[" * 1000)})
    assert bad.status_code == 422
    assert bad.json()["errors"] == [
        {"line": 2, "field": "file", "message": "invalid JSON (nested deeper than 64 levels)"}
    ]
    long_name = client.post("/v1/datasets", files={"file": ("n" * 300 + "\x00", lines[0])})
    assert long_name.status_code == 201 and long_name.json()["name"] == "n" * 200


def test_a_field_called_path_is_named_in_full(client: TestClient) -> None:
    response = client.post("/v1/mixtures", json={"sources": [{"name": "x", "path": "a.jsonl"}]})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "field": "sources.0.path",
            "message": "Value error, the API reads jobs and datasets, not files",
        }
    ]
