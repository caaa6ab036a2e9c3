"""One error shape for every 4xx and 5xx: {"error": Name, "detail": message, "errors": [...]}."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str
    detail: str
    errors: list[dict[str, Any]] | None = None


class AppError(Exception):
    status_code = 400
    # Sent as `Retry-After` (seconds) when set: overload 503s and rate-limit 429s.
    retry_after_s: int | None = None

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        if retry_after_s is not None:
            self.retry_after_s = max(1, retry_after_s)


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    status_code = 409


class InvalidInput(AppError):
    status_code = 422


class PayloadTooLarge(AppError):
    status_code = 413


class ServiceUnavailable(AppError):
    status_code = 503
    retry_after_s = 5  # every 503 says when to come back (the spec declares the header)


class Unauthorized(AppError):
    status_code = 401


class TooManyRequests(AppError):
    status_code = 429
    retry_after_s = 60


def _body(name: str, detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return ErrorBody(error=name, detail=detail, errors=errors).model_dump(exclude_none=True)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "sources", 0, "path") -> "sources.0.path": only the leading location goes (a field
    may well be called "path")."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def error_response(exc: AppError) -> JSONResponse:
    """The response for an AppError; also for middleware that answers before any route runs."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(
        _body(type(exc).__name__, exc.detail, exc.errors),
        status_code=exc.status_code,
        headers=headers,
    )


# Names for the statuses Starlette and FastAPI raise themselves: unknown paths and methods, and
# bodies that cannot be parsed.
_HTTP_NAMES = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        """A lost or refused database connection (a restart, a failover) is a 503 to retry, in
        the same shape as every other error, rather than a bare 500."""
        log.warning("database unavailable: %s", exc)
        return error_response(ServiceUnavailable("the database is unavailable; retry shortly"))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _location(e.get("loc", ())), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:10])
        return JSONResponse(_body("ValidationError", detail, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = _HTTP_NAMES.get(exc.status_code, "HTTPError")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (methods := allowed_methods(request)):
            headers["Allow"] = ", ".join(methods)
        return JSONResponse(
            _body(name, str(exc.detail)), status_code=exc.status_code, headers=headers or None
        )


def allowed_methods(request: Request) -> list[str]:
    """Every documented method at the request's path. Starlette's own `Allow` names only the first
    route whose path matched, so /v1/jobs (GET and POST, two routes) said just POST."""
    path = request.url.path
    paths = request.app.openapi().get("paths", {})
    if path in paths:  # a literal path (/v1/jobs/preview) before a template that also matches it
        return sorted(m.upper() for m in paths[path] if m.upper() in _METHODS)
    for template, operations in paths.items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", template))
        if re.fullmatch(pattern, path):
            return sorted(m.upper() for m in operations if m.upper() in _METHODS)
    return []


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key"},
    404: {"model": ErrorBody, "description": "Not found"},
    422: {"model": ErrorBody, "description": "Invalid input"},
}
