"""Live job progress in the terminal, shared by `submit --wait` and `demo`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a job is followed, so `selfinstruct --help` stays quick
    from rich.console import Console

    from app.client import APIClient

FINISHED = {"succeeded", "failed", "cancelled"}


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def describe(job: dict[str, Any]) -> str:
    p = job["progress"]
    return (
        f"round {p['rounds_completed']} · rejected: {_reasons(p['instructions_rejected'])} · "
        f"instances {p['instances_accepted']} · tokens {p['prompt_tokens']}+{p['completion_tokens']}"
    )


def spending(job: dict[str, Any]) -> str:
    """Tokens, cost so far and the projected total, and the response cache's hits."""
    p, cost = job["progress"], job.get("cost") or {}
    text = f"{p['prompt_tokens'] + p['completion_tokens']:,} tokens"
    if cost.get("cost") is not None:
        text += f", cost {cost['cost']:.4g}"
    projected = cost.get("projected")
    if projected is not None:
        total = projected["cost"] or projected["prompt_tokens"]
        unit = "" if projected["cost"] else " prompt tokens"
        text += f" (total ~{total['expected']:,.4g}{unit})"
    return text + f", {p.get('cache_hits', 0)} cache hits"


class StackFailed(Exception):
    """A process the job depends on has died: the job cannot finish."""


def wait_for_job(
    client: APIClient,
    job_id: str,
    console: Console,
    *,
    poll_s: float = 1.0,
    check: Callable[[], str | None] | None = None,
) -> dict[str, Any]:
    """Poll until the job finishes, drawing accepted instructions and instances as bars.
    `check` names a failure of the processes serving the job (raised as StackFailed)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    job = client.job(job_id)
    target = job["num_instructions"]
    columns = (
        TextColumn("{task.description:<13}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console, transient=False, expand=False) as bars:
        instructions = bars.add_task("instructions", total=target, detail="")
        instances = bars.add_task("with instances", total=target, detail="")
        while True:
            p = job["progress"]
            rejected = sum(p["instructions_rejected"].values())
            bars.update(
                instructions,
                completed=p["instructions_accepted"],
                detail=f"round {p['rounds_completed']}, {rejected} rejected",
            )
            bars.update(
                instances,
                completed=p["instructions_with_instances"],
                detail=f"{p['instances_accepted']} examples, {spending(job)}",
            )
            if job["status"] in FINISHED:
                for warning in p.get("warnings", []):
                    console.print(f"[yellow]warning:[/yellow] {warning}")
                return job
            if check is not None and (failure := check()) is not None:
                raise StackFailed(failure)
            time.sleep(poll_s)
            job = client.job(job_id)
