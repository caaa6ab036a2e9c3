"""The FastAPI application."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.admission import RequestAdmission
from app.api import backends, datasets, health, jobs, mixtures, seed_sets
from app.api.metrics import install_metrics
from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.openapi import install_openapi


def create_app() -> FastAPI:
    app = FastAPI(
        title="selfinstruct",
        version=__version__,
        description="Turn seed tasks into an instruction-tuning dataset with Self-Instruct.",
        lifespan=health.health_monitoring,
    )
    install_error_handlers(app)
    install_openapi(app)
    # Before the metrics middleware, which then wraps it and counts its 413s and 422s too.
    app.add_middleware(BodyLimitMiddleware)
    app.include_router(seed_sets.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(mixtures.router)
    app.include_router(backends.router)
    app.include_router(health.router)
    # Inside the metrics middleware: a request's time in line counts in its latency.
    app.add_middleware(RequestAdmission)
    install_metrics(app)
    # The dashboard: static files calling the API above from the browser.
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app
