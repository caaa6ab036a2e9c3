"""The OpenAPI document fuzzed with schemathesis against the real API process, with every check
schemathesis has: no server errors; statuses, content types, headers and bodies as declared;
schema-invalid requests rejected and schema-valid ones accepted; unsupported methods answered
with 405 and `Allow`; authentication enforced. Every operation and every phase (examples,
coverage, fuzzing, stateful), with an API key and without one.

The CLI runs it (the pytest integration has no coverage or stateful phase); `fuzz_hooks.py`
supplies what JSON Schema cannot say, for positive cases only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.fuzz_hooks import DATASET_FILES, FIXTURES_ENV
from tests.support.stack import REPO_ROOT, ServiceStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 20
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzz_stack(
    pg_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    """API only: fuzzed jobs are queued, never run."""
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        # The fuzzer creates thousands of jobs; the limits would turn most of them into 429s.
        "SELFINSTRUCT_MAX_JOBS_PER_MINUTE_PER_KEY": "1000000",
        "SELFINSTRUCT_MAX_ACTIVE_JOBS_PER_KEY": "1000000",
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


@pytest.fixture(scope="module")
def key(fuzz_stack: ServiceStack) -> str:
    return fuzz_stack.create_key("fuzz")


@pytest.fixture(scope="module")
def fixtures(fuzz_stack: ServiceStack, key: str, default_seeds: Path) -> dict[str, object]:
    """A seed set, a job and a dataset of each kind, for positive cases to refer to."""
    with fuzz_stack.client(key) as client:
        with default_seeds.open("rb") as fh:
            seed_set = client.post("/v1/seed-sets", files={"file": ("s.jsonl", fh)})
        assert seed_set.status_code == 201, seed_set.text
        job = client.post(
            "/v1/jobs", json={"seed_set_id": seed_set.json()["id"], "num_instructions": 5}
        )
        assert job.status_code == 202, job.text
        datasets = {}
        for kind, content in DATASET_FILES.items():
            created = client.post(
                "/v1/datasets", files={"file": ("d.jsonl", content)}, data={"kind": kind}
            )
            assert created.status_code == 201, created.text
            datasets[kind] = created.json()["id"]
    return {"seed_set_id": seed_set.json()["id"], "job_id": job.json()["id"], "datasets": datasets}


def run_schemathesis(
    stack: ServiceStack, fixtures: dict[str, object], key: str | None, workdir: Path
) -> subprocess.CompletedProcess[str]:
    """The CLI, in `workdir` (it keeps a cache there), loading the hooks from this checkout."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
        "PYTHONPATH": str(REPO_ROOT),
        FIXTURES_ENV: json.dumps(fixtures),
    }
    auth = ["--header", f"Authorization: Bearer {key}"] if key else []
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{stack.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "15",
        "--request-timeout",
        "30",
        "--no-color",
        *auth,
    ]
    return subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_nothing(
    fuzz_stack: ServiceStack,
    key: str,
    fixtures: dict[str, object],
    with_key: bool,
    tmp_path: Path,
) -> None:
    result = run_schemathesis(fuzz_stack, fixtures, key if with_key else None, tmp_path)
    report = result.stdout[-20_000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"{report}\n{fuzz_stack.log_tail('api')}"
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated.group(1)) >= 1000, report
    operations = sum(
        len(methods)
        for methods in httpx.get(f"{fuzz_stack.url}/openapi.json").json()["paths"].values()
    )
    assert f"Tested: {operations}" in result.stdout, report  # every operation, none skipped
