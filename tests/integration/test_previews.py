"""Previews and live cost on the real stack: a preview of 20 projects the job of 100 that
follows it, and a running job's status shows what it has spent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import stack_env, started_stack, upload
from tests.support.fake_llm import FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = pytest.mark.integration

PRICES = {"prompt": 0.5, "completion": 1.5}  # per million tokens


@pytest.fixture(scope="module")
def stack(
    pg_url: str, broker_url: str, fake_llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    """The suite's stack, with prices on the default backend so that cost is not null."""
    tmp = tmp_path_factory.mktemp("stack")
    env = stack_env(
        pg_url,
        broker_url,
        fake_llm,
        tmp,
        SELFINSTRUCT_PROMPT_PRICE_PER_MTOK=str(PRICES["prompt"]),
        SELFINSTRUCT_COMPLETION_PRICE_PER_MTOK=str(PRICES["completion"]),
        SELFINSTRUCT_LOG_FORMAT="json",
    )
    with started_stack(env, tmp) as running:
        yield running


def _post(api: httpx.Client, path: str, body: dict) -> dict:  # type: ignore[type-arg]
    response = api.post(path, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _in_band(actual: float, projected: dict) -> bool:  # type: ignore[type-arg]
    """Generous: the fake backend's rejects vary, and a longer run rejects more near-duplicates."""
    return 0.5 * projected["low"] <= actual <= 2.0 * projected["high"]


def test_a_preview_projects_the_job_that_follows_it(
    api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    recipe = {"seed_set_id": seed_set["id"], "num_instructions": 100, "options": {"seed": 11}}
    preview = _post(api, "/v1/jobs/preview", {**recipe, "preview_instructions": 20})
    assert preview["kind"] == "preview" and preview["num_instructions"] == 20
    assert preview["preview_target"] == 100 and preview["projection"] is None
    preview = wait_for_status(api, preview["id"], timeout_s=180)
    assert preview["status"] == "succeeded", stack.logs()
    assert preview["progress"]["instructions_accepted"] == 20
    projection = preview["projection"]
    assert projection["target"] == 100
    for measure in ("requests", "prompt_tokens", "completion_tokens", "cost", "wall_seconds"):
        span = projection[measure]
        assert 0 < span["low"] <= span["expected"] <= span["high"], measure
    assert projection["requests"]["expected"] > preview["progress"]["llm_requests"]
    assert projection["yield"]["accepted_per_step1_request"]["expected"] > 0
    assert projection["yield"]["rejection_reasons"] == dict(
        sorted(preview["progress"]["instructions_rejected"].items(), key=lambda kv: -kv[1])
    )
    report = api.get(f"/v1/jobs/{preview['id']}/report").json()
    assert report["projection"] == projection

    job = _post(api, "/v1/jobs", {**recipe, "from_preview": preview["id"]})
    assert job["kind"] == "job" and job["from_preview"] == preview["id"]
    job = wait_for_status(api, job["id"], timeout_s=300)
    assert job["status"] == "succeeded", stack.logs()
    progress = job["progress"]
    assert _in_band(progress["llm_requests"], projection["requests"])
    assert _in_band(progress["prompt_tokens"], projection["prompt_tokens"])
    assert _in_band(progress["completion_tokens"], projection["completion_tokens"])

    compared = api.get(f"/v1/jobs/{job['id']}/report").json()["preview"]
    assert compared["preview_id"] == preview["id"]
    assert compared["projection"]["target"] == 100
    assert compared["actual"]["requests"] == progress["llm_requests"]
    assert compared["actual"]["cost"] == job["cost"]["cost"]
    assert set(compared["within_range"]) >= {"requests", "prompt_tokens", "completion_tokens"}


def test_a_running_job_shows_tokens_and_cost_so_far_and_a_projected_total(
    api: httpx.Client, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    job = _post(api, "/v1/jobs", {"seed_set_id": seed_set["id"], "num_instructions": 5000})
    deadline = time.monotonic() + 90
    while True:
        current = api.get(f"/v1/jobs/{job['id']}").json()
        cost = current["cost"]
        if current["status"] == "running" and cost["projected"] is not None:
            break
        assert time.monotonic() < deadline, current
        time.sleep(0.3)
    api.post(f"/v1/jobs/{job['id']}/cancel")
    progress = current["progress"]
    assert cost["prompt_tokens"] == progress["prompt_tokens"] > 0
    assert cost["completion_tokens"] == progress["completion_tokens"] > 0
    billed = (
        (progress["prompt_tokens"] - progress["cached_prompt_tokens"]) * PRICES["prompt"]
        + (progress["completion_tokens"] - progress["cached_completion_tokens"])
        * PRICES["completion"]
    ) / 1e6
    assert cost["cost"] == pytest.approx(billed, abs=1e-6)
    assert cost["cache_hits"] == progress["cache_hits"]
    assert cost["projected"]["target"] == 5000
    assert cost["projected"]["cost"]["expected"] > cost["cost"]
    assert cost["projected"]["requests"]["expected"] > progress["llm_requests"]


@pytest.mark.parametrize("value", [0, 201, "many", None])
def test_bad_preview_instructions_are_a_422_naming_the_field(
    api: httpx.Client, default_seeds: Path, value: object
) -> None:
    seed_set = upload(api, default_seeds)
    body = {"seed_set_id": seed_set["id"], "num_instructions": 100, "preview_instructions": value}
    response = api.post("/v1/jobs/preview", json=body)
    assert response.status_code == 422, response.text
    assert "preview_instructions" in response.text


def test_from_preview_must_name_a_preview_of_the_caller(
    api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    recipe = {"seed_set_id": seed_set["id"], "num_instructions": 3}
    plain = _post(api, "/v1/jobs", recipe)
    for preview_id, code, says in (
        (plain["id"], 422, "is not a preview"),
        ("00000000-0000-4000-8000-000000000000", 404, "no preview"),
    ):
        response = api.post("/v1/jobs", json={**recipe, "from_preview": preview_id})
        assert response.status_code == code, response.text
        assert "from_preview" in response.text and says in response.text
    response = api.post("/v1/jobs/preview", json={**recipe, "from_preview": plain["id"]})
    assert response.status_code == 422 and "from_preview" in response.text
    response = api.get("/v1/jobs/preview")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    preview = _post(api, "/v1/jobs/preview", recipe)
    with stack.client(stack.create_key("another tenant")) as other:
        theirs = upload(other, default_seeds)
        response = other.post(
            "/v1/jobs",
            json={
                "seed_set_id": theirs["id"],
                "num_instructions": 3,
                "from_preview": preview["id"],
            },
        )
    assert response.status_code == 404, response.text  # another key's preview is not found
    assert "no preview" in response.text
