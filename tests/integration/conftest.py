"""A real stack per test module: fresh PostgreSQL database, a Redis db, API and worker processes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine

from app.localmodel import LocalModelUnavailable, check_installed, ensure_model
from app.migrate import upgrade_database
from tests.support import services
from tests.support.fake_llm import FakeLLMServer
from tests.support.stack import ServiceStack

SECOND_KEY = "sk-second-backend-secret"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    services.require_services()
    admin = services.postgres_admin_url()
    assert admin is not None
    name = services.unique_db_name()
    url = services.create_database(admin, name)
    upgrade_database(url)
    yield url
    services.drop_database(admin, name)


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    services.require_services()
    url = services.redis_url()
    assert url is not None
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def stack_env(
    pg_url: str, broker_url: str, llm: FakeLLMServer, tmp: Path, **extra: str
) -> dict[str, str]:
    """The environment of a module's stack: its database, broker and default backend, a data
    directory under `tmp`, and whatever the module adds or overrides."""
    return {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        **extra,
    }


@contextmanager
def started_stack(env: dict[str, str], tmp: Path, workers: int = 1) -> Iterator[ServiceStack]:
    """The API and `workers` worker processes on `env`, stopped on exit."""
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        for _ in range(workers):
            running.start_worker()
        yield running


@pytest.fixture(scope="module")
def stack(
    pg_url: str, broker_url: str, fake_llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("stack")
    backends = {"second": {"base_url": fake_llm.base_url, "api_key": SECOND_KEY,
                           "models": ["fake-model"]}}  # fmt: skip
    env = stack_env(
        pg_url,
        broker_url,
        fake_llm,
        tmp,
        SELFINSTRUCT_BACKENDS=json.dumps(backends),
        SELFINSTRUCT_LOG_FORMAT="json",
    )
    with started_stack(env, tmp) as running:
        yield running


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[Engine]:
    """An engine on the module's database, for reading what the stack stored."""
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def api(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("integration tests")) as client:
        yield client


def upload(api: httpx.Client, path: Path) -> dict:  # type: ignore[type-arg]
    with path.open("rb") as fh:
        response = api.post(
            "/v1/seed-sets", files={"file": (path.name, fh, "application/x-ndjson")}
        )
    assert response.status_code == 201, response.text
    return response.json()


# --- the real local model ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the assembled model, shared by the tests (and CI runs, through
    SELFINSTRUCT_TEST_MODEL_CACHE) so the parts are joined once."""
    try:
        check_installed()
    except LocalModelUnavailable as exc:
        if os.environ.get("SELFINSTRUCT_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    configured = os.environ.get("SELFINSTRUCT_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.mktemp("model-cache")
    ensure_model(cache)
    return cache


@pytest.fixture
def data_dir(model_cache: Path, tmp_path: Path) -> Path:
    """A fresh data directory whose models/ is the shared cache."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(model_cache / "models", target_is_directory=True)
    return data
