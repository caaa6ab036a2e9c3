"""A plain `pip install .` (no extras, a fresh virtualenv) runs a job on PostgreSQL + Redis.

The virtualenv is made outside the suite, since it needs the package index: `.ci/run` builds it
and passes its path in SELFINSTRUCT_PLAIN_VENV. By hand: `python3 -m venv V && V/bin/pip install .`,
then `SELFINSTRUCT_PLAIN_VENV=V make test`. Its
API and worker run from a directory away from the checkout, so they import the installed
package and only the dependencies it declares; the test LLM server and the assertions run here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = pytest.mark.integration

PLAIN_VENV_ENV = "SELFINSTRUCT_PLAIN_VENV"


@pytest.fixture(scope="module")
def plain_python() -> str:
    venv = os.environ.get(PLAIN_VENV_ENV)
    if not venv:
        if os.environ.get("SELFINSTRUCT_REQUIRE_PLAIN_INSTALL") == "1":
            pytest.fail(f"{PLAIN_VENV_ENV} is not set: CI must test the plain install")
        pytest.skip(f"set {PLAIN_VENV_ENV} to a virtualenv with a plain `pip install .`")
    python = str(Path(venv) / "bin" / "python")
    extras = subprocess.run(
        [python, "-c", "import importlib.util as u; print([m for m in ('pytest', 'llama_cpp', "
         "'spacy') if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert extras == "[]", f"not a plain install: {extras} importable"
    return python


def test_a_plain_install_runs_a_job_on_postgres_and_redis(
    plain_python: str,
    pg_url: str,
    broker_url: str,
    fake_llm: FakeLLMServer,
    default_seeds: Path,
    tmp_path: Path,
) -> None:
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": fake_llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": "",
    }
    with ServiceStack(env, tmp_path / "logs", python=plain_python, cwd=tmp_path) as stack:
        stack.start_api()
        stack.start_worker()  # the Redis transport: kombu needs `packaging` here
        with stack.client(stack.create_key("plain")) as api:
            seed_set = upload(api, default_seeds)
            created = api.post(
                "/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 5}
            )
            assert created.status_code == 202, created.text
            job = wait_for_status(api, created.json()["id"], timeout_s=180)
            assert job["status"] == "succeeded", job
            lines = api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
        assert lines, "the job stored no examples"
        imported = subprocess.run(
            [plain_python, "-c", "import app; print(app.__file__)"],
            cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "site-packages" in imported, imported  # the installed package, not the checkout
