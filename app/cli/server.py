"""Server-side commands: serve the API, run a worker, migrate the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import cli

if TYPE_CHECKING:  # imported when a command runs, so `selfinstruct --help` stays quick
    from app.config import Settings


@cli.command()
def migrate() -> None:
    """Upgrade the database to the newest schema."""
    from app.config import get_settings
    from app.migrate import describe_upgrade, upgrade_database

    settings = get_settings()
    typer.echo(describe_upgrade(*upgrade_database(settings.resolved_database_url)))


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    embedded: Annotated[
        bool | None,
        typer.Option(
            "--embedded/--no-embedded",
            help="Also run a worker (and the local model when OPENAI_BASE_URL is unset). "
            "Default: on when DATABASE_URL and CELERY_BROKER_URL are unset.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="API processes (uvicorn workers); not with --embedded."),
    ] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from app.config import get_settings

    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    if embedded is None:
        embedded = settings.embedded
    _check_auth(settings, host)
    from app.logs import configure_logging

    configure_logging(settings)
    # asyncio's loop, not uvloop: under load uvloop accepted new connections slowly (the accept
    # queue drained at about 70 a second), so a client that connects while a thousand others
    # poll, /healthz probes included, waited seconds before its request was read; asyncio's
    # loop accepts every pending connection at once (bench/bench_api_load.py, BENCHMARKS.md).
    from app.prompt_health import PromptHealthProtocol

    run = {
        "factory": True,
        "host": host,
        "port": port,
        "log_config": None,
        "loop": "asyncio",
        "http": PromptHealthProtocol,  # /healthz ahead of the loop's queue (app.prompt_health)
    }
    if not embedded:
        uvicorn.run("app.main:create_served_app", workers=workers, **run)  # type: ignore[arg-type]
        return
    if workers > 1:
        raise typer.BadParameter(
            "the embedded stack serves from one process", param_hint="--workers"
        )
    from app.embedded import EmbeddedStack

    with EmbeddedStack(settings, console_echo=typer.echo):
        uvicorn.run("app.main:create_served_app", **run)  # type: ignore[arg-type]


# A task holds its process while its last requests come back, so a pool larger than the cores
# keeps the backend fed (BENCHMARKS.md: 0.71 of 512 slots against 0.62 with 2). docker-compose.yml
# runs the same.
DEFAULT_WORKER_POOL = 4


@cli.command()
def worker(
    concurrency: Annotated[
        int, typer.Option(help="Worker processes (as in docker-compose.yml).")
    ] = DEFAULT_WORKER_POOL,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname",
            "-n",
            help="Worker node name, e.g. worker2@%h, so two workers on one host have their "
            "own (default: Celery's, celery@HOST).",
        ),
    ] = None,
) -> None:
    """Run a Celery worker for the pipeline tasks (rounds first, then bulk work)."""
    from workers.celery_app import celery_app

    celery_app.worker_main(worker_argv(concurrency, loglevel, hostname))


def worker_argv(concurrency: int, loglevel: str, hostname: str | None) -> list[str]:
    """Celery's own command line for `selfinstruct worker`."""
    from workers.celery_app import WORKER_QUEUES

    argv = ["worker", f"--loglevel={loglevel}", "-Q", ",".join(WORKER_QUEUES)]
    argv.append(f"--concurrency={concurrency}")
    return argv + ([f"--hostname={hostname}"] if hostname else [])


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _check_auth(settings: Settings, host: str) -> None:
    """Without API keys, anyone who can connect sees every job: allowed on loopback only."""
    if settings.keys_required:
        typer.echo("API keys required (create one with `selfinstruct keys create --name NAME`)")
        return
    if host not in LOOPBACK:
        typer.echo(
            f"error: API keys are off (SELFINSTRUCT_AUTH={settings.auth}, "
            f"{'embedded' if settings.embedded else 'configured'}) and --host {host} is not "
            "loopback; set SELFINSTRUCT_AUTH=required or bind to 127.0.0.1",
            err=True,
        )
        raise typer.Exit(code=2)
    typer.echo(f"API keys are off: the API listens on loopback only ({host})")
