"""The OpenAPI spec fuzzed with schemathesis against the real API process: no request, however
malformed, may produce a server error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.stack import ServiceStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 150
SENT: list[tuple[str, str, int]] = []


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
        "SELFINSTRUCT_MAX_JOBS_PER_MINUTE_PER_KEY": "100000",
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


@pytest.fixture(scope="module")
def auth(fuzz_stack: ServiceStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {fuzz_stack.create_key('fuzz')}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_stack: ServiceStack, default_seeds: Path, auth: dict[str, str]):  # type: ignore[no-untyped-def]
    # A real seed set, so generated ids sometimes exist.
    token = auth["Authorization"].split()[1]
    with fuzz_stack.client(token) as client, default_seeds.open("rb") as fh:
        client.post("/v1/seed-sets", files={"file": ("s.jsonl", fh)})
    return schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json")


def test_no_server_errors(api_schema, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Every operation, EXAMPLES_PER_OPERATION generated cases each, with and without a key."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            headers = auth if len(SENT) % 4 else None  # mostly with the key, sometimes without
            response = case.call(headers=headers, timeout=30)
            SENT.append((case.method, case.path, response.status_code))
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                response.text[:500],
            )

        fuzz()
    statuses = Counter(status for _, _, status in SENT)
    print(f"schemathesis: {len(SENT)} requests over {len(operations)} operations: {dict(statuses)}")
    assert len(SENT) >= 1000, len(SENT)
    assert {status for _, _, status in SENT} & {200, 201, 202}
