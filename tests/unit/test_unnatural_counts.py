"""An Unnatural-Instructions job's numbers agree wherever a user reads them: progress, the report,
the export and /metrics count the same examples, reformulations have their own series, and each
per-accepted cost is named for what it divides by. Mixtures' inversion requests are in /metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import session_scope
from app.models import Job, Mixture
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.report import QualityReport
from app.services.export import iter_examples
from app.services.jobs import job_progress
from app.services.report import job_report
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.metrics import metric_samples
from tests.support.sqlite_db import (
    forget_settings,
    new_job,
    run_to_end,
    stored_seed_set,
    use_sqlite,
)

ACCEPTED = (("outcome", "accepted"), ("reason", ""))


@pytest.fixture
def llm_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with FakeLLMServer(FakeLLMConfig(seed=8, truncate_rate=0.0)) as server:
        use_sqlite(tmp_path / "unnatural.db", monkeypatch, server.base_url)
        yield server.base_url
    forget_settings()


def finished_unnatural_job(default_seeds: Path) -> tuple[uuid.UUID, Progress, QualityReport]:
    job_id = new_job(stored_seed_set(default_seeds), 4, GenerationOptions(seed=1, mode="unnatural"))
    run_to_end(job_id)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job_id, job_progress(session, job), job_report(session, job)


def test_progress_report_and_export_count_the_same_examples(
    llm_url: str, default_seeds: Path
) -> None:
    job_id, progress, report = finished_unnatural_job(default_seeds)
    exported = list(iter_examples(job_id))
    assert progress.reformulations_accepted > 0  # the export has more examples than cores
    assert len(exported) > progress.instructions_accepted
    assert report.instances.accepted == progress.instances_accepted == len(exported)
    assert report.instructions.accepted == progress.instructions_accepted


def test_each_per_accepted_cost_has_one_name_and_one_value(
    llm_url: str, default_seeds: Path
) -> None:
    _, progress, report = finished_unnatural_job(default_seeds)
    tokens = progress.prompt_tokens + progress.completion_tokens
    per_example = round(tokens / progress.instances_accepted, 1)
    per_instruction = round(tokens / progress.instructions_accepted, 1)
    assert per_example != per_instruction
    assert progress.tokens_per_accepted_example == report.usage.tokens_per_accepted_example
    assert progress.tokens_per_accepted_example == per_example
    assert progress.tokens_per_accepted_instruction == report.usage.tokens_per_accepted_instruction
    assert progress.tokens_per_accepted_instruction == per_instruction


def test_metrics_count_reformulations_apart_from_instructions(
    llm_url: str, default_seeds: Path
) -> None:
    _, progress, _ = finished_unnatural_job(default_seeds)
    found = metric_samples()
    assert found[("selfinstruct_instructions_total", ACCEPTED)] == progress.instructions_accepted
    assert (
        found[("selfinstruct_reformulations_total", ACCEPTED)] == progress.reformulations_accepted
    )
    rejected = {
        dict(labels)["reason"]: n
        for (name, labels), n in found.items()
        if name == "selfinstruct_reformulations_total" and dict(labels)["outcome"] == "rejected"
    }
    assert rejected == progress.reformulations_rejected
    assert found[("selfinstruct_instances_total", ACCEPTED)] == progress.instances_accepted


def test_metrics_include_the_llm_requests_of_mixture_inversion(llm_url: str) -> None:
    usage = {"requests": 5, "errors": 1, "prompt_tokens": 100, "completion_tokens": 40}
    with session_scope() as session:
        session.add(Mixture(status="succeeded", recipe={}, manifest={"llm_usage": usage}))
        session.add(Mixture(status="running", recipe={}, manifest=None))
    found = metric_samples()
    purpose = ("purpose", "mixture_inversion")
    assert found[("selfinstruct_llm_requests_total", (("ok", "true"), purpose))] == 4
    assert found[("selfinstruct_llm_requests_total", (("ok", "false"), purpose))] == 1
    assert found[("selfinstruct_llm_tokens_total", (("kind", "prompt"),))] == 100
    assert found[("selfinstruct_llm_tokens_total", (("kind", "completion"),))] == 40
