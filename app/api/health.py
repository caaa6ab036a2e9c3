"""Liveness with a real check of the database and the broker."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from app.db import get_engine
from app.schemas import Health
from workers.celery_app import celery_app

router = APIRouter(tags=["health"])


def _database_ok() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _broker_ok() -> bool:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return True
    except Exception:
        return False


@router.get("/healthz", response_model=Health)
def healthz(response: Response) -> Health:
    database, broker = _database_ok(), _broker_ok()
    if not (database and broker):
        response.status_code = 503
    return Health(
        status="ok" if database and broker else "degraded", database=database, broker=broker
    )
