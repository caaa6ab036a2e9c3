"""Client commands over the HTTP API: submit, extend, status, report, jobs, download, cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli import cli
from app.cli.consoles import stderr_console
from app.cli.progress import describe, wait_for_job
from app.selfinstruct.formats import ExportFormat
from app.selfinstruct.seed_format_names import SeedFormat

if TYPE_CHECKING:  # httpx, rich and the settings load when a command runs, not for `--help`
    from rich.table import Table

    from app.client import APIClient

WIDE_TERMINAL = 120  # columns from which `jobs` also shows each job's progress

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="SELFINSTRUCT_API_URL", help="Base URL of the API."),
]


Wait = Annotated[bool, typer.Option(help="Follow progress until the job finishes.")]
WaitOutput = Annotated[
    Path | None, typer.Option("--output", "-o", help="With --wait: download here.")
]


@contextmanager
def _api(api_url: str | None) -> Iterator[APIClient]:
    """A client for the configured API; an API error ends the command with its message."""
    from app.client import APIClient, APIError
    from app.config import get_settings

    settings = get_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else None
    with APIClient(api_url or settings.resolved_api_url, api_key=key) as client:
        try:
            yield client
        except APIError as exc:
            stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=1) from exc


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
    wait: Wait = False,
    output: WaitOutput = None,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Run a preview instead: wait for it, print sample examples and the projected "
            "requests, tokens, cost and time of the full job.",
        ),
    ] = False,
    preview_instructions: Annotated[
        int, typer.Option(min=1, max=200, help="With --preview: instructions to generate.")
    ] = 20,
    from_preview: Annotated[
        str | None, typer.Option(help="The preview this job follows (its id).")
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Upload seed tasks and start a job; prints the job id."""
    try:
        parsed: dict[str, Any] = json.loads(options) if options else {}
    except json.JSONDecodeError as exc:
        stderr_console().print(f"[red]error:[/red] --options is not valid JSON: {exc}")
        raise typer.Exit(code=2) from exc
    with _api(api_url) as client:
        seed_set = client.upload_seed_set(seeds, seed_format=seed_format.value)
        job = client.create_job(
            seed_set_id=seed_set["id"],
            num_instructions=num_instructions,
            options=parsed,
            from_preview=from_preview,
            preview_instructions=preview_instructions if preview else None,
        )
        typer.echo(job["id"])
        if wait or preview:
            _follow(client, job["id"], output, show_preview=preview)


@cli.command()
def extend(
    job_id: str,
    num_instructions: Annotated[
        int,
        typer.Option(
            "--num-instructions", "-n", min=1, help="New total target (more than the job has)."
        ),
    ],
    wait: Wait = False,
    output: WaitOutput = None,
    api_url: ApiUrl = None,
) -> None:
    """Grow a succeeded job to a higher target; what it has is kept, not generated again."""
    with _api(api_url) as client:
        job = client.extend(job_id, num_instructions=num_instructions)
        typer.echo(f"{job['id']} {job['status']} (target {job['num_instructions']})")
        if wait:
            _follow(client, job["id"], output)


def _follow(
    client: APIClient, job_id: str, output: Path | None, *, show_preview: bool = False
) -> None:
    """Draw the job's progress until it finishes (then, for a preview, its sample examples and
    projection), then download it to `output` if given; a job that did not succeed ends the
    command with an error."""
    job = wait_for_job(client, job_id, stderr_console())
    if show_preview:
        print_preview(job, client.items(job["id"], limit=5)["items"])
    if output is not None:
        records = client.download(job["id"], output)
        stderr_console().print(f"wrote {records} examples to {output}")
    if job["status"] != "succeeded":
        stderr_console().print(f"[red]job {job['status']}[/red]: {job.get('error') or ''}")
        raise typer.Exit(code=1)


def print_preview(job: dict[str, Any], examples: list[dict[str, Any]]) -> None:
    """A preview's sample examples and its projection for the full target, as tables."""
    from rich.console import Console  # rich: imported when a command prints a table
    from rich.table import Table

    out = Console()
    sample = Table(title=f"sample examples ({len(examples)})")
    for column in ("instruction", "input", "output"):
        sample.add_column(column, overflow="fold")
    for example in examples:
        sample.add_row(
            *(str(example.get(c) or "")[:200] for c in ("instruction", "input", "output"))
        )
    out.print(sample)
    projection = job.get("projection")
    if projection is None:
        out.print("[yellow]no projection:[/yellow] the preview accepted no instruction")
        return
    table = Table(title=f"projected for {projection['target']:,} instructions (95 % range)")
    for column in ("", "expected", "low", "high"):
        table.add_column(column, justify="right" if column else "left")
    for name in ("requests", "prompt_tokens", "completion_tokens", "cost", "wall_seconds"):
        span = projection.get(name)
        cells = (
            ["n/a"] * 3 if span is None else [_number(span[k]) for k in ("expected", "low", "high")]
        )
        table.add_row(name.replace("_", " "), *cells)
    out.print(table)
    rates = projection["yield"]
    per_request = rates["accepted_per_step1_request"]
    out.print(
        f"yield: {per_request['expected']} accepted per step-1 request "
        f"({per_request['low']}-{per_request['high']}); rejected: "
        + (", ".join(f"{k} {v}" for k, v in rates["rejection_reasons"].items()) or "none"),
        highlight=False,
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.4g}"


@cli.command()
def status(job_id: str, api_url: ApiUrl = None) -> None:
    """Show a job's status and progress as JSON."""
    with _api(api_url) as client:
        job = client.job(job_id)
    typer.echo(json.dumps(job, indent=2))


@cli.command()
def jobs(
    limit: Annotated[int, typer.Option(min=1, max=200, help="Jobs to show.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Newest jobs to skip (paging).")] = 0,
    api_url: ApiUrl = None,
) -> None:
    """List jobs, newest first, with their full ids."""
    with _api(api_url) as client:
        page = client.jobs(limit=limit, offset=offset)
    from rich import box  # rich: imported when a command prints a table
    from rich.console import Console
    from rich.table import Table

    out = Console()
    # The progress column needs room; on a narrow terminal `status JOB_ID` shows it.
    with_progress = out.width >= WIDE_TERMINAL
    title = f"jobs {offset + 1}-{offset + len(page['items'])} of {page['total']}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    # An id is for copying: never shortened, whatever the terminal's width.
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("accepted", no_wrap=True, justify="right")
    table.add_column("created", no_wrap=True)
    if with_progress:
        table.add_column("progress", overflow="fold")
    for job in page["items"]:
        accepted = f"{job['progress']['instructions_accepted']}/{job['num_instructions']}"
        cells = [job["id"], job["status"], accepted, job["created_at"][:16].replace("T", " ")]
        table.add_row(*cells, *([describe(job)] if with_progress else []))
    out.print(table)


@cli.command()
def download(
    job_id: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the file; '-' or none: stdout."),
    ] = None,
    include_rejected: Annotated[bool, typer.Option(help="Append rejected items.")] = False,
    format: Annotated[
        ExportFormat | None,
        typer.Option("--format", "-f", help="Training format (default: the raw records)."),
    ] = None,
    container: Annotated[
        str, typer.Option(help="With --format or --dataset-dir: jsonl, json or parquet.")
    ] = "jsonl",
    system_prompt: Annotated[
        str | None, typer.Option(help="With --format: system message for chat formats.")
    ] = None,
    dataset_dir: Annotated[
        Path | None,
        typer.Option(
            "--dataset-dir",
            help="Write a Hugging Face dataset folder here instead: README.md (a dataset card) "
            "and data/train.<container>, loadable with datasets.load_dataset(DIR).",
        ),
    ] = None,
    api_url: ApiUrl = None,
) -> None:
    """Download a job's examples (partial results while it runs), raw or in a training format."""
    if dataset_dir is not None:
        if output is not None or include_rejected:
            stderr_console().print(
                "[red]error:[/red] --dataset-dir takes neither --output nor --include-rejected"
            )
            raise typer.Exit(code=2)
        params = {"format": (format or ExportFormat.RAW).value, "container": container}
        if system_prompt:
            params["system_prompt"] = system_prompt
        with _api(api_url) as client:
            files = client.download_dataset(job_id, dataset_dir, params)
        stderr_console().print(
            f"wrote {', '.join(files)} to {dataset_dir}", soft_wrap=True, highlight=False
        )
        return
    export = None
    if format is not None:
        export = {"format": format.value, "container": container}
        if system_prompt:
            export["system_prompt"] = system_prompt
    to_stdout = output is None or str(output) == "-"
    with _api(api_url) as client:
        records = client.download(
            job_id,
            None if to_stdout else output,
            include_rejected=include_rejected,
            export=export,
        )
    where = "stdout" if to_stdout else output
    stderr_console().print(
        f"wrote {records} records to {where}", soft_wrap=True
    )  # a path to copy: unbroken


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
    with _api(api_url) as client:
        data = client.report(job_id, sample=sample)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console  # rich: imported when a command prints a table
    from rich.table import Table

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
    for name in ("to_nearest_seed", "to_nearest_instruction", "to_nearest_earlier_instruction"):
        if name in rouge:
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
    from rich.table import Table  # rich: imported when a command prints a table

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
    with _api(api_url) as client:
        job = client.rerun(job_id)
    typer.echo(f"{job['id']} {job['status']} (rerun of {job['rerun_of']})")


@cli.command()
def cancel(job_id: str, api_url: ApiUrl = None) -> None:
    """Cancel a job; what it generated so far stays downloadable."""
    with _api(api_url) as client:
        job = client.cancel(job_id)
    typer.echo(f"{job['id']} {job['status']}")
