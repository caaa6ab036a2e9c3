"""The client commands as a user runs them: full job ids, paging, downloads to a file or stdout
that count records, the whole text report, worker names, and a `--help` that answers quickly."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.client import APIClient
from app.selfinstruct.report import InstructionRow, build_report
from app.selfinstruct.verbs import verb_objects
from app.services.export import records_stream

RUNNER = CliRunner()
HEAVY = ("fastapi", "sqlalchemy", "celery", "pydantic", "httpx", "numpy", "yaml", "app.config")
RECORDS = [{"instruction": f"Task {n}\nwith a second line", "output": "o"} for n in range(3)]


def test_help_imports_none_of_the_heavy_modules() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['selfinstruct', '--help']\n"
        "from app.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert "download" in done.stdout and "worker" in done.stdout


def _job(n: int) -> dict[str, Any]:
    progress = {
        "instructions_accepted": n,
        "rounds_completed": 1,
        "instructions_rejected": {"too_similar": 2},
        "instances_accepted": n,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    return {
        "id": str(uuid.UUID(int=n + 1)),
        "status": "running",
        "num_instructions": 100,
        "created_at": "2026-01-01T00:00:00.000",
        "progress": progress,
    }


def test_jobs_shows_whole_ids_at_80_columns_and_pages_with_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: dict[str, int] = {}

    def jobs(self: APIClient, *, limit: int, offset: int) -> dict[str, Any]:
        asked.update(limit=limit, offset=offset)
        return {"items": [_job(1), _job(2)], "total": 7, "limit": limit, "offset": offset}

    monkeypatch.setattr(APIClient, "jobs", jobs)
    result = RUNNER.invoke(cli, ["jobs", "--limit", "2", "--offset", "4"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert asked == {"limit": 2, "offset": 4}
    assert _job(1)["id"] in result.stdout and _job(2)["id"] in result.stdout
    assert "jobs 5-6 of 7" in result.stdout and "2/100" in result.stdout


def _serve(monkeypatch: pytest.MonkeyPatch) -> None:
    def export(self: APIClient, job_id: str, params: dict[str, str]) -> Iterator[bytes]:
        body = b"".join(records_stream(lambda: iter(RECORDS), params["container"]))  # type: ignore[arg-type]
        yield from (body[i : i + 7] for i in range(0, len(body), 7))  # chunks cut lines apart

    monkeypatch.setattr(APIClient, "iter_export", export)


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
def test_download_counts_records_in_every_container(
    container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch)
    target = tmp_path / f"train.{container}"
    result = RUNNER.invoke(
        cli, ["download", "j1", "-o", str(target), "-f", "raw", "--container", container]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {len(RECORDS)} records to {target}" in " ".join(result.stderr.split())
    if container == "parquet":
        assert pq.read_table(target).to_pylist() == RECORDS
    elif container == "json":
        assert json.loads(target.read_text()) == RECORDS


@pytest.mark.parametrize("output", [[], ["-o", "-"]])
def test_download_writes_to_stdout(output: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch)
    result = RUNNER.invoke(cli, ["download", "j1", *output, "-f", "raw"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == RECORDS
    assert f"wrote {len(RECORDS)} records to stdout" in result.stderr
    assert not Path("-").exists()


def test_text_report_shows_the_nearest_earlier_instruction_histogram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [InstructionRow(f"Write a poem about the {w}.", True, None, False) for w in "ab"]
    report = build_report(rows, [], ["Seed task."], (1, 1, 1), ("heuristic", verb_objects))
    monkeypatch.setattr(APIClient, "report", lambda self, job_id, sample: report.model_dump())
    result = RUNNER.invoke(cli, ["report", "j1"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "ROUGE-L to nearest earlier instruction" in result.stdout


def test_worker_passes_its_hostname_to_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.celery_app import celery_app

    started: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", started.append)
    assert RUNNER.invoke(cli, ["worker", "--hostname", "w2@%h"]).exit_code == 0
    assert RUNNER.invoke(cli, ["worker"]).exit_code == 0
    assert "--hostname=w2@%h" in started[0]
    assert not any(arg.startswith("--hostname") for arg in started[1])


def _extended(status: str, accepted: int) -> dict[str, Any]:
    job = _job(accepted)
    job["progress"].update(instructions_with_instances=accepted, warnings=[])
    return {**job, "id": "j1", "status": status, "num_instructions": 300}


def test_extend_raises_the_target_and_follows_the_job_like_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, int]] = []
    polls = iter([_extended("running", 100), _extended("running", 200)])

    def extend(self: APIClient, job_id: str, *, num_instructions: int) -> dict[str, Any]:
        asked.append((job_id, num_instructions))
        return _extended("running", 100)

    def download(self: APIClient, job_id: str, output: Path) -> int:
        output.write_text("{}\n")
        return 1

    monkeypatch.setattr(APIClient, "extend", extend)
    monkeypatch.setattr(
        APIClient, "job", lambda self, job_id: next(polls, _extended("succeeded", 300))
    )
    monkeypatch.setattr(APIClient, "download", download)
    monkeypatch.setattr("app.cli.progress.time.sleep", lambda _: None)
    target = tmp_path / "grown.jsonl"
    result = RUNNER.invoke(cli, ["extend", "j1", "-n", "300", "--wait", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert asked == [("j1", 300)]
    assert result.stdout.splitlines()[0] == "j1 running (target 300)"
    assert "300/300" in result.stderr and target.read_text() == "{}\n"


def test_extend_of_a_job_that_cannot_grow_ends_with_the_apis_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.client import APIError

    def refuse(self: APIClient, job_id: str, *, num_instructions: int) -> dict[str, Any]:
        raise APIError(409, "Conflict: job j1 is running; only a succeeded job can be extended")

    monkeypatch.setattr(APIClient, "extend", refuse)
    result = RUNNER.invoke(cli, ["extend", "j1", "--num-instructions", "300"])
    assert result.exit_code == 1
    assert "only a succeeded job can be extended" in " ".join(result.stderr.split())
    assert RUNNER.invoke(cli, ["extend", "j1"]).exit_code == 2  # the new target is required


def test_submit_preview_waits_and_prints_examples_and_the_projection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.selfinstruct.projection import Sample, Usage, project

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Write a haiku."}\n')
    projection = project(
        Sample(
            Usage(5, 5000, 1000), Usage(40, 12000, 2000), 40, 20, 20, {"near_duplicate": 20}, 9.0
        ),
        1000,
        prices=(0.5, 1.5),
    )
    assert projection is not None
    job = {
        **_job(20),
        "status": "succeeded",
        "num_instructions": 20,
        "kind": "preview",
        "preview_target": 1000,
        "projection": projection.model_dump(mode="json", by_alias=True),
    }
    job["progress"].update(instructions_with_instances=20, warnings=[])
    sent: dict[str, Any] = {}

    def create_job(self: APIClient, **body: Any) -> dict[str, Any]:
        sent.update(body)
        return job

    monkeypatch.setattr(APIClient, "upload_seed_set", lambda self, path, seed_format: {"id": "s1"})
    monkeypatch.setattr(APIClient, "create_job", create_job)
    monkeypatch.setattr(APIClient, "job", lambda self, job_id: job)
    example = {"instruction": "Name a colour.", "input": "", "output": "Teal."}
    monkeypatch.setattr(APIClient, "items", lambda self, job_id, limit: {"items": [example]})
    result = RUNNER.invoke(
        cli, ["submit", str(seeds), "-n", "1000", "--preview"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert sent["preview_instructions"] == 20 and sent["num_instructions"] == 1000
    assert "Name a colour." in result.stdout and "Teal." in result.stdout
    assert "projected for 1,000 instructions" in result.stdout
    for row in ("requests", "prompt tokens", "completion tokens", "cost", "wall seconds"):
        assert row in result.stdout
    assert f"{projection.requests.expected:,.0f}" in result.stdout
    assert "near_duplicate 20" in result.stdout


def test_progress_shows_cost_so_far_the_projected_total_and_cache_hits() -> None:
    from app.cli.progress import spending

    job = _job(5)
    job["progress"]["cache_hits"] = 3
    span = {"expected": 1.25, "low": 1.0, "high": 1.5}
    job["cost"] = {"cost": 0.0123, "projected": {"cost": span, "prompt_tokens": span}}
    assert spending(job) == "15 tokens, cost 0.0123 (total ~1.25), 3 cache hits"
    job["cost"] = {"cost": None, "projected": None}
    assert spending(job) == "15 tokens, 3 cache hits"
