"""`selfinstruct demo`: the whole product on one machine, with nothing to configure."""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import cli
from app.cli.consoles import stderr_console
from app.cli.progress import StackFailed, wait_for_job

if TYPE_CHECKING:  # imported when the command runs, so `selfinstruct --help` stays quick
    from app.config import Settings


@cli.command()
def demo(
    num_instructions: Annotated[int, typer.Option("--num-instructions", "-n", min=1)] = 20,
    seeds: Annotated[
        Path | None, typer.Option(help="Seed tasks JSONL (default: the bundled seed set).")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the generated examples.")
    ] = Path("demo-examples.jsonl"),
    options: Annotated[str | None, typer.Option(help="Generation options as JSON.")] = None,
) -> None:
    """Start everything embedded, generate a small dataset, write it as JSONL, and stop."""
    from app.apiserver import BackgroundAPIServer
    from app.client import APIClient, APIError
    from app.config import get_settings
    from app.embedded import EmbeddedStack

    settings = get_settings()
    where = "embedded SQLite + local broker" if settings.embedded else "configured services"
    stderr_console().print(
        f"[bold]selfinstruct demo[/bold]: {num_instructions} instructions, {where}"
    )
    stderr_console().print(f"data directory: {settings.data_dir}")
    seed_file = seeds or Path(str(resources.files("app.data") / "seed_tasks.jsonl"))
    job_options = json.loads(options) if options else {}
    with (
        EmbeddedStack(settings, console_echo=stderr_console().print) as stack,
        BackgroundAPIServer() as api,
        APIClient(api.url, api_key=_demo_key(settings)) as client,
    ):
        try:
            seed_set = client.upload_seed_set(seed_file, name=seed_file.name)
            stderr_console().print(
                f"seed set: {seed_set['task_count']} tasks "
                f"({seed_set['classification_count']} classification); "
                f"LLM: {stack.llm_base_url}"
            )
            job = client.create_job(
                seed_set_id=seed_set["id"],
                num_instructions=num_instructions,
                options=job_options,
            )
            job = wait_for_job(client, job["id"], stderr_console(), check=stack.failure)
            lines = client.download(job["id"], output)
        except APIError as exc:
            stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=1) from exc
        except StackFailed as exc:
            stderr_console().print(f"[red]error:[/red] {exc}", highlight=False, markup=False)
            with contextlib.suppress(APIError):
                client.cancel(job["id"])
            raise typer.Exit(code=1) from exc
    _summary(job, lines, output)
    if job["status"] != "succeeded":
        raise typer.Exit(code=1)


def _demo_key(settings: Settings) -> str | None:
    """With keys required (a configured database), the demo makes a key of its own."""
    if not settings.keys_required:
        return None
    from app.db import session_scope
    from app.services.keys import create_key

    with session_scope() as session:
        return create_key(session, "selfinstruct demo")[1]


def _summary(job: dict, lines: int, output: Path) -> None:  # type: ignore[type-arg]
    p = job["progress"]
    stderr_console().print(f"\n[bold]job {job['id']}: {job['status']}[/bold]")
    if job.get("error"):
        stderr_console().print(f"[red]{job['error']}[/red]")
    stderr_console().print(
        f"instructions accepted: {p['instructions_accepted']}, "
        f"rejected: {sum(p['instructions_rejected'].values())} {p['instructions_rejected']}"
    )
    stderr_console().print(
        f"instances accepted: {p['instances_accepted']}, "
        f"rejected: {sum(p['instances_rejected'].values())} {p['instances_rejected']}"
    )
    stderr_console().print(
        f"LLM requests: {p['llm_requests']} ({p['llm_errors']} failed, "
        f"{p.get('llm_retries', 0)} retried attempts), "
        f"tokens: {p['prompt_tokens']} prompt + {p['completion_tokens']} completion"
    )
    stderr_console().print(f"[green]wrote {lines} examples to {output.resolve()}[/green]")
