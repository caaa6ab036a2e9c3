"""Client commands over the HTTP API: submit, status, report, jobs, download, cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli import cli
from app.cli.progress import describe, wait_for_job
from app.client import APIClient, APIError
from app.config import get_settings
from app.selfinstruct.formats import ExportFormat
from app.selfinstruct.seed_formats import SeedFormat

console = Console(stderr=True)

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="SELFINSTRUCT_API_URL", help="Base URL of the API."),
]


def _client(api_url: str | None) -> APIClient:
    settings = get_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return APIClient(api_url or settings.resolved_api_url, api_key=key)


def _fail(exc: APIError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(code=1)


@cli.command()
def submit(
    seeds: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Seed tasks JSONL.")],
    num_instructions: Annotated[int, typer.Option("--num-instructions", "-n", min=1)] = 100,
    options: Annotated[
        str | None, typer.Option(help="Generation options as JSON, e.g. '{\"seed\": 1}'.")
    ] = None,
    seed_format: Annotated[
        SeedFormat,
        typer.Option("--seed-format", help="Format of SEEDS."),
    ] = SeedFormat.SELF_INSTRUCT,
    wait: Annotated[bool, typer.Option(help="Follow progress until the job finishes.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="With --wait: download here.")
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Upload seed tasks and start a job; prints the job id."""
    try:
        parsed: dict[str, Any] = json.loads(options) if options else {}
    except json.JSONDecodeError as exc:
        console.print(f"[red]error:[/red] --options is not valid JSON: {exc}")
        raise typer.Exit(code=2) from exc
    with _client(api_url) as client:
        try:
            seed_set = client.upload_seed_set(seeds, seed_format=seed_format.value)
            job = client.create_job(
                seed_set_id=seed_set["id"], num_instructions=num_instructions, options=parsed
            )
            typer.echo(job["id"])
            if not wait:
                return
            job = wait_for_job(client, job["id"], console)
            if output is not None:
                lines = client.download(job["id"], output)
                console.print(f"wrote {lines} examples to {output}")
        except APIError as exc:
            raise _fail(exc) from exc
    if job["status"] != "succeeded":
        console.print(f"[red]job {job['status']}[/red]: {job.get('error') or ''}")
        raise typer.Exit(code=1)


@cli.command()
def status(job_id: str, api_url: ApiUrl = None) -> None:
    """Show a job's status and progress as JSON."""
    with _client(api_url) as client:
        try:
            job = client.job(job_id)
        except APIError as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps(job, indent=2))


@cli.command()
def jobs(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    api_url: ApiUrl = None,
) -> None:
    """List jobs, newest first."""
    with _client(api_url) as client:
        try:
            page = client.jobs(limit=limit)
        except APIError as exc:
            raise _fail(exc) from exc
    table = Table("id", "status", "accepted", "target", "created", "progress")
    for job in page["items"]:
        p = job["progress"]
        table.add_row(
            job["id"],
            job["status"],
            str(p["instructions_accepted"]),
            str(job["num_instructions"]),
            job["created_at"][:19],
            describe(job),
        )
    Console().print(table)


@cli.command()
def download(
    job_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSONL.")],
    include_rejected: Annotated[bool, typer.Option(help="Append rejected items.")] = False,
    format: Annotated[
        ExportFormat | None,
        typer.Option("--format", "-f", help="Training format (default: the raw records)."),
    ] = None,
    container: Annotated[
        str, typer.Option(help="With --format: jsonl, json or parquet.")
    ] = "jsonl",
    system_prompt: Annotated[
        str | None, typer.Option(help="With --format: system message for chat formats.")
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Download a job's examples (partial results while it runs), raw or in a training format."""
    export = None
    if format is not None:
        export = {"format": format.value, "container": container}
        if system_prompt:
            export["system_prompt"] = system_prompt
    with _client(api_url) as client:
        try:
            lines = client.download(
                job_id, output, include_rejected=include_rejected, export=export
            )
        except APIError as exc:
            raise _fail(exc) from exc
    console.print(f"wrote {lines} lines to {output}")


@cli.command()
def report(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sample: Annotated[
        int, typer.Option(help="Accepted instructions measured for ROUGE-L and verbs.")
    ] = 2000,
    api_url: ApiUrl = None,
) -> None:
    """A job's quality report: rejections, ROUGE-L, verbs and objects, lengths, usage."""
    with _client(api_url) as client:
        try:
            data = client.report(job_id, sample=sample)
        except APIError as exc:
            raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    out = Console()
    for kind in ("instructions", "instances"):
        part = data[kind]
        surplus = part.get("over_target", 0)
        title = f"{kind}: {part['accepted']} accepted of {part['generated']}"
        table = Table(title=title + (f", {surplus} past the target" if surplus else ""))
        table.add_column("rejected because")
        table.add_column("count", justify="right")
        table.add_column("example")
        for reason, count in part["by_reason"].items():
            table.add_row(reason, str(count), (part["examples"].get(reason) or [""])[0][:80])
        out.print(table)
    rouge = data["rouge_l"]
    for name in ("to_nearest_seed", "to_nearest_instruction"):
        out.print(
            _bars(
                f"ROUGE-L {name.replace('_', ' ')} ({rouge['sample']} of {rouge['of']})",
                rouge[name],
            )
        )
    verbs = Table(title=f"top verbs ({data['verbs']['parser']})")
    verbs.add_column("verb")
    verbs.add_column("count", justify="right")
    verbs.add_column("top objects")
    for row in data["verbs"]["top_verbs"]:
        verbs.add_row(
            row["verb"], str(row["count"]), ", ".join(f"{o} ({n})" for o, n in row["objects"])
        )
    out.print(verbs)
    for name, histogram in data["lengths"].items():
        out.print(_bars(f"{name.replace('_', ' ')}", histogram))
    usage = data["usage"]
    out.print(
        f"classification share {data['classification_share']}, empty input share "
        f"{data['empty_input_share']}; {usage['requests']} requests, "
        f"{usage['tokens_per_accepted_example']} tokens per accepted example"
        + (f", cost {usage['cost']}" if usage["cost"] is not None else ""),
        highlight=False,
    )


def _bars(title: str, histogram: dict[str, Any]) -> Table:
    table = Table(title=f"{title}: median {histogram['median']}, mean {histogram['mean']}")
    table.add_column("from", justify="right")
    table.add_column("count", justify="right")
    table.add_column("")
    peak = max(histogram["counts"]) or 1
    for edge, count in zip(histogram["edges"], histogram["counts"], strict=True):
        if count:
            table.add_row(str(edge), str(count), "#" * max(1, round(30 * count / peak)))
    return table


@cli.command()
def rerun(job_id: str, api_url: ApiUrl = None) -> None:
    """Start a new job with JOB's recipe: seed set, target, options and RNG seed."""
    with _client(api_url) as client:
        try:
            job = client.rerun(job_id)
        except APIError as exc:
            raise _fail(exc) from exc
    typer.echo(f"{job['id']} {job['status']} (rerun of {job['rerun_of']})")


@cli.command()
def cancel(job_id: str, api_url: ApiUrl = None) -> None:
    """Cancel a job; what it generated so far stays downloadable."""
    with _client(api_url) as client:
        try:
            job = client.cancel(job_id)
        except APIError as exc:
            raise _fail(exc) from exc
    typer.echo(f"{job['id']} {job['status']}")
