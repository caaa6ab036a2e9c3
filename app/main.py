"""The FastAPI application."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.admission import RequestAdmission
from app.api import backends, datasets, health, jobs, mixtures, response_cache, seed_sets
from app.api.metrics import install_metrics
from app.docs_pages import install_docs
from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.openapi import install_openapi

_frozen = False


def freeze_startup_objects() -> None:
    """Leave what the process made to start (modules, classes, routes, schemas: most of its
    tracked objects, and they live as long as it does) out of later garbage collections.

    Why: a full collection walks every tracked object while holding the GIL, and after the
    imports the API has about 200,000 of them: a full collection took 77 ms after create_app(),
    and the event loop, `/healthz` included, waits that long whenever one runs. Frozen, a full
    collection walks only what requests made since. Once per process: objects frozen later
    (a test's apps) would never be collected if they end up in reference cycles.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with health.health_monitoring(app):
        freeze_startup_objects()
        yield


def create_served_app() -> FastAPI:
    """The app as `selfinstruct serve` runs it, in each of its processes (uvicorn starts its
    workers as new interpreters, which have no logging until this configures it)."""
    from app.config import get_settings
    from app.logs import configure_logging

    configure_logging(get_settings(), queued=True)
    return create_app()


def create_app() -> FastAPI:
    app = FastAPI(
        title="selfinstruct",
        version=__version__,
        description="Turn seed tasks into an instruction-tuning dataset with Self-Instruct.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    # Before the metrics middleware, which then wraps it and counts its 413s and 422s too.
    app.add_middleware(BodyLimitMiddleware)
    app.include_router(seed_sets.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(mixtures.router)
    app.include_router(backends.router)
    app.include_router(response_cache.router)
    app.include_router(health.router)
    # Inside the metrics middleware: a request's time in line counts in its latency.
    app.add_middleware(RequestAdmission)
    install_metrics(app)
    # The dashboard: static files calling the API above from the browser.
    ui_dir = Path(__file__).parent / "ui"
    app.mount("/ui", StaticFiles(directory=ui_dir, html=True), name="ui")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """Browsers ask for it on every page; an SVG, which they all accept at this address."""
        return FileResponse(ui_dir / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app
