"""API keys on the real stack: no key, a revoked key, and another key's data on every endpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from app.models import ApiKey
from tests.integration.conftest import upload
from tests.support.stack import REPO_ROOT, ServiceStack, wait_for_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def alice(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("alice")) as client:
        yield client


@pytest.fixture(scope="module")
def bob(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("bob")) as client:
        yield client


@pytest.fixture(scope="module")
def alices_job(alice: httpx.Client, default_seeds: Path) -> dict:  # type: ignore[type-arg]
    seed_set = upload(alice, default_seeds)
    response = alice.post("/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 3})
    assert response.status_code == 202, response.text
    job = wait_for_status(alice, response.json()["id"])
    return {"job": job, "seed_set": seed_set}


def test_no_key_and_bad_key_get_401(stack: ServiceStack) -> None:
    for key in (None, "si_not-a-real-key"):
        with stack.client(key) as anonymous:
            for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs")]:
                response = anonymous.request(method, path, json={})
                assert response.status_code == 401, (key, path)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "API key" in response.json()["detail"]
        assert stack.client(key).get("/healthz").status_code == 200


def test_another_keys_data_is_not_found_anywhere(
    alice: httpx.Client,
    bob: httpx.Client,
    alices_job: dict,  # type: ignore[type-arg]
) -> None:
    job_id, seed_set_id = alices_job["job"]["id"], alices_job["seed_set"]["id"]
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 200
    for method, path, body in [
        ("GET", f"/v1/seed-sets/{seed_set_id}", None),
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/examples.jsonl", None),
        ("GET", f"/v1/jobs/{job_id}/examples.jsonl?include=rejected", None),
        ("POST", f"/v1/jobs/{job_id}/cancel", None),
        ("POST", "/v1/jobs", {"seed_set_id": seed_set_id, "num_instructions": 2}),
    ]:
        response = bob.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
    listed = bob.get("/v1/jobs", params={"limit": 200}).json()
    assert job_id not in {j["id"] for j in listed["items"]}
    assert alice.get(f"/v1/jobs/{job_id}").json()["status"] == alices_job["job"]["status"]


def test_tokens_are_stored_only_as_hashes(stack: ServiceStack, pg_url: str) -> None:
    token = stack.create_key("hash check")
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(select(ApiKey.token_hash, ApiKey.prefix, ApiKey.name)).all()
    engine.dispose()
    assert all(token != h and token not in h for h, _, _ in rows)
    assert any(p == token[:10] for _, p, n in rows if n == "hash check")


def test_revoked_key_gets_401(stack: ServiceStack) -> None:
    token = stack.create_key("short-lived")
    with stack.client(token) as client:
        assert client.get("/v1/jobs").status_code == 200
        subprocess.run(
            [sys.executable, "-m", "app", "keys", "revoke", token[:10]],
            env=stack.env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        # Keys validated in the last second are cached per API process (app.deps): the
        # revocation must show within that second plus one background check.
        deadline = time.monotonic() + 5
        while (status := client.get("/v1/jobs").status_code) != 401:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    listed = subprocess.run(
        [sys.executable, "-m", "app", "keys", "list"],
        env={**stack.env, "COLUMNS": "200"},
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "short-lived" in listed and token not in listed


def test_active_job_limit_per_key(stack: ServiceStack, default_seeds: Path) -> None:
    """The limit counts one key's jobs only: another key still starts jobs."""
    with (
        stack.client(stack.create_key("busy")) as busy,
        stack.client(stack.create_key("idle")) as idle,
    ):
        seed_set = upload(busy, default_seeds)
        started = []
        for _ in range(25):
            response = busy.post(
                "/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 5000}
            )
            if response.status_code == 429:
                assert "queued or running" in response.json()["detail"]
                break
            assert response.status_code == 202
            started.append(response.json()["id"])
        assert len(started) == 20  # the default limit
        other = upload(idle, default_seeds)
        response = idle.post("/v1/jobs", json={"seed_set_id": other["id"], "num_instructions": 1})
        assert response.status_code == 202
        for job_id in started:
            busy.post(f"/v1/jobs/{job_id}/cancel")
