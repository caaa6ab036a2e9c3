"""The test-services helper: per-worker isolation and the skip-or-fail rule CI depends on."""

from __future__ import annotations

import pytest

from tests.support import services

REDIS_BASE = "redis://127.0.0.1:6379/0"
PG_BASE = "postgresql+psycopg://selfinstruct:selfinstruct@127.0.0.1:5432/selfinstruct_test"


@pytest.fixture
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("TEST_REDIS_URL", raising=False)


@pytest.mark.parametrize(("worker", "expected"), [("gw0", 0), ("gw3", 3), ("master", 0)])
def test_worker_number_comes_from_xdist(
    monkeypatch: pytest.MonkeyPatch, worker: str, expected: int
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    assert services.xdist_worker_number() == expected


def test_db_names_differ_per_worker_and_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    first, second = services.unique_db_name(), services.unique_db_name("jobs")
    assert first.startswith("si_test_gw1_")
    assert second.startswith("jobs_gw1_")
    assert first.removeprefix("si_test_") != second.removeprefix("jobs_")
    assert len(first) <= 63  # PostgreSQL truncates longer identifiers


def test_redis_url_gives_each_worker_its_own_db_and_spares_db_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "redis://:secret@127.0.0.1:6390/0")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert services.redis_url() == "redis://:secret@127.0.0.1:6390/1"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    assert services.redis_url() == "redis://:secret@127.0.0.1:6390/3"
    assert services.redis_url(db=9) == "redis://:secret@127.0.0.1:6390/9"
    # A second checkout's run keeps to dbs of its own from the one its URL names.
    monkeypatch.setenv("TEST_REDIS_URL", "redis://:secret@127.0.0.1:6390/8")
    assert services.redis_url() == "redis://:secret@127.0.0.1:6390/10"


@pytest.mark.usefixtures("no_services")
def test_unset_urls_mean_no_services() -> None:
    assert services.postgres_admin_url() is None
    assert services.redis_url() is None


@pytest.mark.usefixtures("no_services")
def test_missing_services_skip_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.REQUIRE_SERVICES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="TEST_DATABASE_URL and TEST_REDIS_URL"):
        services.require_services()


@pytest.mark.usefixtures("no_services")
def test_missing_services_fail_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(services.REQUIRE_SERVICES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="not set"):
        services.require_services()


def test_unreachable_redis_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "postgres_ping", lambda url: True)
    monkeypatch.setenv("TEST_DATABASE_URL", PG_BASE)
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv(services.REQUIRE_SERVICES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="Redis at TEST_REDIS_URL does not answer"):
        services.require_services()


def test_restart_helpers_target_the_ports_in_the_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DATABASE_URL", PG_BASE.replace("5432", "5439"))
    monkeypatch.setenv("TEST_REDIS_URL", REDIS_BASE.replace("6379", "6399"))
    assert services._service_ports() == {"TEST_PG_PORT": "5439", "TEST_REDIS_PORT": "6399"}


@pytest.mark.integration
def test_database_round_trip_on_real_postgres() -> None:
    services.require_services()
    admin = services.postgres_admin_url()
    assert admin is not None
    name = services.unique_db_name("si_helper")
    url = services.create_database(admin, name)
    try:
        assert url.endswith(f"/{name}")
        assert services.postgres_ping(url)
    finally:
        services.drop_database(admin, name)
    assert not services.postgres_ping(url)
