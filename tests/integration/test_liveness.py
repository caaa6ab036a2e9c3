"""Liveness with the production defaults (30 s lease, 5 s heartbeat, 5 s sweeps): a job whose
worker is killed moves again within a minute, and a healthy task that runs longer than the lease
is never sent twice (the LLM server sees each request once)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import Instance, Instruction, Job, LLMCall
from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFAULTS = Settings()
MOVES_WITHIN_S = 60.0


def test_the_defaults_are_the_production_ones() -> None:
    """The tests below rely on the stack running with these (no lease or heartbeat override)."""
    assert DEFAULTS.job_lease_s <= 30
    assert DEFAULTS.heartbeat_interval_s * 3 <= DEFAULTS.job_lease_s
    assert DEFAULTS.sweep_interval_s <= 10


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    """No HTTP faults: every request the server sees twice was sent twice by us."""
    with FakeLLMServer(FakeLLMConfig(seed=31, truncate_rate=0.0)) as server:
        yield server


@pytest.fixture(scope="module")
def live_stack(
    pg_url: str, broker_url: str, llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("liveness")
    env = {  # production defaults for every interval: only where the services are
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
    }
    for name in ("SELFINSTRUCT_JOB_LEASE_S", "SELFINSTRUCT_HEARTBEAT_INTERVAL_S",
                 "SELFINSTRUCT_SWEEP_INTERVAL_S"):  # fmt: skip
        assert name not in os.environ, f"{name} would override the production default"
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


@pytest.fixture(scope="module")
def client(live_stack: ServiceStack) -> Iterator[httpx.Client]:
    with live_stack.client(live_stack.create_key("liveness tests")) as c:
        yield c


def start_job(client: httpx.Client, seeds: Path, target: int, **options: object) -> str:
    seed_set = upload(client, seeds)
    response = client.post(
        "/v1/jobs",
        json={"seed_set_id": seed_set["id"], "num_instructions": target, "options": options},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def round_claim(db: Engine, job_id: str) -> tuple[object, str | None, int]:
    with db.connect() as conn:
        token, holder, rounds = conn.execute(
            select(Job.round_claim_token, Job.round_claimed_by, Job.rounds_completed).where(
                Job.id == job_id
            )
        ).one()
    return token, holder, rounds


def worker_of(stack: ServiceStack, holder: str) -> subprocess.Popen[bytes] | None:
    """The worker whose process group holds the pool process `host:pid`."""
    pid = int(holder.rsplit(":", 1)[1])
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return None
    return next((w for w in stack.workers if w.poll() is None and w.pid == group), None)


def assert_exact(db: Engine, job_id: str, target: int) -> None:
    with db.connect() as conn:
        accepted = conn.scalars(
            select(Instruction.text).where(
                Instruction.job_id == job_id, Instruction.accepted.is_(True)
            )
        ).all()
        examples = conn.execute(
            select(Instance.instruction_id, Instance.position).where(Instance.job_id == job_id)
        ).all()
    assert len(accepted) == len(set(accepted)) == target
    assert len(examples) == len(set(examples)) > 0


TARGET_AFTER_KILL = 150


def test_a_job_moves_again_within_a_minute_of_its_worker_being_killed(
    client: httpx.Client,
    live_stack: ServiceStack,
    llm: FakeLLMServer,
    db: Engine,
    default_seeds: Path,
) -> None:
    # Instruction requests take about 2 s, so a round is in flight when we strike.
    llm.config.slow_kinds, llm.config.slow_rate, llm.config.slow_s = ("instructions",), 1.0, 2.0
    try:
        live_stack.start_worker()
        live_stack.start_worker()
        # Large enough that rounds are still out after the first are stored (step 1 streams).
        job_id = start_job(client, default_seeds, TARGET_AFTER_KILL, seed=41)
        killed_at, rounds_at_kill = _kill_the_round_holder(live_stack, db, job_id)
        while round_claim(db, job_id)[2] == rounds_at_kill:
            assert time.monotonic() - killed_at < MOVES_WITHIN_S, live_stack.logs()
            time.sleep(0.2)
        moved_after = time.monotonic() - killed_at
        llm.config.slow_rate = 0.0
        job = wait_for_status(client, job_id, timeout_s=240)
    finally:
        llm.config.slow_kinds, llm.config.slow_rate, llm.config.slow_s = (), 0.0, 0.0
        stop_workers(live_stack)
    print(f"the job moved again {moved_after:.1f} s after its worker was killed")
    assert job["status"] == "succeeded", live_stack.logs()
    assert job["progress"]["instructions_accepted"] == TARGET_AFTER_KILL
    assert_exact(db, job_id, TARGET_AFTER_KILL)


def stop_workers(stack: ServiceStack) -> None:
    for worker in stack.workers:
        if worker.poll() is None:
            stack.kill_worker(worker, sig=signal.SIGTERM)


def full_log(stack: ServiceStack, name: str) -> str:
    path = stack.log_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _kill_the_round_holder(stack: ServiceStack, db: Engine, job_id: str) -> tuple[float, int]:
    """SIGKILL the whole worker (pool and all) whose process is running the job's round, while
    the round is in flight; the time of the kill and the rounds then completed."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        token, holder, rounds = round_claim(db, job_id)
        worker = worker_of(stack, holder) if token is not None and holder and rounds else None
        if worker is None:
            time.sleep(0.05)
            continue
        stack.kill_worker(worker)
        killed_at = time.monotonic()
        if round_claim(db, job_id)[0] == token:  # it died holding the round
            return killed_at, rounds
        stack.start_worker()  # the round committed just before the kill: strike again
    raise AssertionError(f"never saw a round in flight:\n{stack.logs()}")


def test_a_task_longer_than_the_lease_is_not_sent_twice(
    client: httpx.Client,
    live_stack: ServiceStack,
    llm: FakeLLMServer,
    db: Engine,
    default_seeds: Path,
) -> None:
    # Every round and every classification takes longer than the lease plus a sweep interval:
    # only the heartbeat keeps the sweeper from sending that work to another task.
    slow_s = DEFAULTS.job_lease_s + 2 * DEFAULTS.sweep_interval_s
    llm.config.slow_kinds = ("instructions", "classify")
    llm.config.slow_rate, llm.config.slow_s = 1.0, slow_s
    llm.reset()
    names = [f"worker{len(live_stack.workers) + n}" for n in range(2)]
    live_stack.start_worker()
    live_stack.start_worker()
    try:
        started = time.monotonic()
        job_id = start_job(client, default_seeds, 3, seed=42, requests_per_round=2)
        job = wait_for_status(client, job_id, timeout_s=8 * slow_s)
        took = time.monotonic() - started
    finally:
        llm.config.slow_kinds, llm.config.slow_rate, llm.config.slow_s = (), 0.0, 0.0
        stop_workers(live_stack)
    assert job["status"] == "succeeded", live_stack.logs()
    assert took > 2 * slow_s  # a round, then classifications, each longer than the lease
    prompts = collections.Counter(r.get("prompt") for r in llm.requests)
    assert prompts and max(prompts.values()) == 1, [p for p, n in prompts.items() if n > 1]
    with db.connect() as conn:
        calls = conn.scalar(select(func.count()).where(LLMCall.job_id == job_id))
    assert calls == len(llm.requests)
    logs = "".join(full_log(live_stack, name) for name in names)
    assert "stalled" not in logs and "expired" not in logs and "skips it" not in logs
