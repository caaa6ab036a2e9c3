"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from app import __version__
from app.api import backends, datasets, health, jobs, mixtures, seed_sets
from app.api.metrics import install_metrics
from app.errors import install_error_handlers


def create_app() -> FastAPI:
    app = FastAPI(
        title="selfinstruct",
        version=__version__,
        description="Turn seed tasks into an instruction-tuning dataset with Self-Instruct.",
    )
    install_error_handlers(app)
    app.include_router(seed_sets.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(mixtures.router)
    app.include_router(backends.router)
    app.include_router(health.router)
    install_metrics(app)
    return app
