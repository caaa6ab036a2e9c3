"""Rounds, the critical path, travel on their own queue, which every worker reads first."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli.server import DEFAULT_WORKER_POOL
from app.selfinstruct.balance import steers_on_instances
from app.selfinstruct.options import BalanceTargets
from app.services import fairness
from app.services.queue import enqueue_round
from workers.celery_app import (
    INSTANCES_TASK,
    MIXTURE_TASK,
    QUEUE,
    ROUND_QUEUE,
    ROUND_TASK,
    WORKER_QUEUES,
    celery_app,
)


def _queue_of(task: str) -> str:
    return celery_app.amqp.router.route({}, task)["queue"].name


def test_rounds_have_a_queue_of_their_own() -> None:
    assert _queue_of(ROUND_TASK) == ROUND_QUEUE
    assert _queue_of(INSTANCES_TASK) == _queue_of(MIXTURE_TASK) == QUEUE


def test_workers_read_the_round_queue_first(monkeypatch: pytest.MonkeyPatch) -> None:
    argv: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", argv.append)
    result = CliRunner().invoke(cli, ["worker", "--concurrency", "3"])
    assert result.exit_code == 0, result.output
    (args,) = argv
    assert args[args.index("-Q") + 1] == f"{ROUND_QUEUE},{QUEUE}"
    assert WORKER_QUEUES == (ROUND_QUEUE, QUEUE)
    assert "--concurrency=3" in args


def test_the_default_pool_is_the_one_docker_compose_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    argv: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", argv.append)
    assert CliRunner().invoke(cli, ["worker"]).exit_code == 0
    compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    assert f'"worker", "--concurrency", "{DEFAULT_WORKER_POOL}"' in compose
    assert f"--concurrency={DEFAULT_WORKER_POOL}" in argv[0] and DEFAULT_WORKER_POOL == 4


@pytest.mark.parametrize(("behind_bulk", "queue"), [(False, ROUND_QUEUE), (True, QUEUE)])
def test_a_round_goes_first_unless_it_waits_for_its_instances(
    monkeypatch: pytest.MonkeyPatch, behind_bulk: bool, queue: str
) -> None:
    sent: list[dict[str, object]] = []

    def send_task(name: str, **options: object) -> None:
        routed = celery_app.amqp.router.route(dict(options), name)
        sent.append({"queue": routed["queue"].name, "priority": options["priority"]})

    monkeypatch.setattr(celery_app, "send_task", send_task)
    monkeypatch.setattr(fairness, "claim_priority", lambda owner: 6)  # a deep backlog
    enqueue_round(uuid.uuid4(), 3, owner=None, behind_bulk=behind_bulk)
    assert sent == [{"queue": queue, "priority": 6 if behind_bulk else 0}]


def test_balance_shares_wait_for_instances_but_a_verb_cap_does_not() -> None:
    assert steers_on_instances(BalanceTargets(classification_share=0.5))
    assert steers_on_instances(BalanceTargets(input_share=0.3))
    assert not steers_on_instances(BalanceTargets(max_per_verb=5))
    assert not steers_on_instances(None)


def test_a_detached_broker_channel_reports_a_connection_error_not_a_crash() -> None:
    """kombu builds a new pool from a transport it already detached when Redis restarts; the
    AttributeError that followed ended the worker. It must read as the broker being away."""
    from types import SimpleNamespace

    import redis.exceptions
    from kombu.transport import redis as kombu_redis

    import workers.celery_app  # noqa: F401  (the guard is installed on import)

    channel = object.__new__(kombu_redis.Channel)
    channel.connection = SimpleNamespace(client=None)  # what the close after a lost link leaves
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
    assert issubclass(redis.exceptions.ConnectionError, kombu_redis.Transport.connection_errors)
