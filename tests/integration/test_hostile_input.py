"""Hostile input against the real API process on PostgreSQL: each gets a 4xx naming the field (or
the line), none a 500; and a failed job's error names its backend, not the backend's URL."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.stack import ServiceStack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEEP = b"[" * 100_000 + b"]" * 100_000
TASK = {"instruction": "Name a colour of the rainbow."}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llm_url() -> str:
    return f"http://127.0.0.1:{closed_port()}/v1"


@pytest.fixture(scope="module")
def hostile_stack(
    pg_url: str, broker_url: str, llm_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("hostile")
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": llm_url,  # nothing listens there
        "SELFINSTRUCT_MODEL": "m",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        "SELFINSTRUCT_LLM_MAX_RETRIES": "0",
        "SELFINSTRUCT_TASK_MAX_RETRIES": "0",
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


@pytest.fixture(scope="module")
def api(hostile_stack: ServiceStack) -> Iterator[httpx.Client]:
    with hostile_stack.client(hostile_stack.create_key("hostile")) as client:
        yield client


def job(api: httpx.Client, **options: object) -> httpx.Response:
    return api.post(
        "/v1/jobs", json={"seed_tasks": [TASK], "num_instructions": 2, "options": options}
    )


def fields(response: httpx.Response) -> list[str]:
    return [e.get("field") or f"line {e.get('line')}" for e in response.json()["errors"]]


def test_offset_beyond_what_postgresql_holds(api: httpx.Client) -> None:
    created = job(api)
    assert created.status_code == 202, created.text
    items = api.get(f"/v1/jobs/{created.json()['id']}/items", params={"offset": 2**63})
    assert items.status_code == 422 and fields(items) == ["offset"]


def test_seed_beyond_its_column(api: httpx.Client) -> None:
    response = job(api, seed=2**64)
    assert response.status_code == 422 and fields(response) == ["options.seed"]


def test_keyword_blacklist_of_150_mb_never_reaches_the_database(api: httpx.Client) -> None:
    prefix = b'{"seed_tasks": [{"instruction": "Hi there."}], "num_instructions": 2, '
    entry = itertools.repeat(b"x" * 1_000_000, 150)  # streamed: no Content-Length to go by
    body = itertools.chain([prefix, b'"options": {"keyword_blacklist": ["'], entry, [b'"]}}'])
    huge = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["detail"].startswith("body: larger than")
    long_entry = job(api, keyword_blacklist=["x" * 1_000_000])
    assert long_entry.status_code == 422
    assert fields(long_entry) == ["options.keyword_blacklist.0"]
    many = job(api, keyword_blacklist=["x"] * 1001)
    assert many.status_code == 422 and fields(many) == ["options.keyword_blacklist"]


def test_alpaca_seed_file_nested_100000_deep(api: httpx.Client) -> None:
    response = api.post(
        "/v1/seed-sets", files={"file": ("deep.json", DEEP)}, data={"format": "alpaca"}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "file: line 1: invalid JSON: nested deeper than 64 levels"


def test_seed_and_dataset_lines_nested_too_deep_name_the_line(api: httpx.Client) -> None:
    good = json.dumps(TASK).encode() + b"\n"
    seeds = api.post("/v1/seed-sets", files={"file": ("s.jsonl", good + DEEP)})
    assert seeds.status_code == 422 and fields(seeds) == ["line 2"]
    record = b'{"instruction": "a", "output": "b"}\n'
    dataset = api.post("/v1/datasets", files={"file": ("d.jsonl", record * 3 + DEEP)})
    assert dataset.status_code == 422 and dataset.json()["errors"][0]["line"] == 4
    assert "nested deeper than 64 levels" in dataset.json()["detail"]


def test_request_body_nested_too_deep(api: httpx.Client) -> None:
    body = b'{"seed_tasks": [{"instruction": "Hi there.", "source": ' + DEEP + b"}]}"
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and fields(response) == ["body"]


def test_a_failed_job_names_its_backend_not_its_url(
    hostile_stack: ServiceStack, api: httpx.Client, llm_url: str
) -> None:
    hostile_stack.start_worker(concurrency=1)
    created = job(api, seed=1)
    assert created.status_code == 202, created.text
    failed = wait_for_status(api, created.json()["id"], timeout_s=120)
    assert failed["status"] == "failed", failed
    assert "backend 'default'" in failed["error"], failed["error"]
    port = llm_url.split(":")[2].split("/")[0]
    assert llm_url not in failed["error"] and port not in failed["error"], failed["error"]
