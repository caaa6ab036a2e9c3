"""The OpenAPI document, corrected to say what the API really sends and accepts.

FastAPI declares its own 422 body (HTTPValidationError, `detail` as an array) for every route,
while our handlers answer every error with ErrorBody (`detail` a string). Rather than repeat the
same `responses=` on each route, the generated document is rewritten once: each operation gets
ErrorBody for every status our handlers and middleware can produce for it, with the headers
those responses carry. Requests that name an LLM backend are limited to the backends (and
models) this server has, which only the running server knows.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.config import DEFAULT_BACKEND, Settings, get_settings
from app.errors import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_BODY_METHODS = {"post", "put", "patch"}

RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
WWW_AUTHENTICATE = {
    "description": "The authentication scheme: Bearer.",
    "required": True,
    "schema": {"type": "string"},
}

# status: (description, headers) for the errors any /v1 operation may answer with.
_EVERY_V1_OPERATION: dict[str, tuple[str, dict[str, Any]]] = {
    "401": (
        "Missing, unknown or revoked API key (when keys are required)",
        {"WWW-Authenticate": WWW_AUTHENTICATE},
    ),
    "503": (
        "Overloaded, or the task broker is unavailable: retry after Retry-After seconds",
        {"Retry-After": RETRY_AFTER},
    ),
}
_WITH_PARAMETERS = {"422": ("Invalid input; `errors` names each field", {})}
_WITH_PATH_PARAMETERS = {"404": ("Not found (or owned by another key)", {})}
_WITH_BODY = {
    "400": ("The body could not be read (e.g. a malformed multipart form)", {}),
    "413": ("The body (or the uploaded file) is larger than its limit", {}),
    "422": ("Invalid input; `errors` names each field (or line of a file)", {}),
}
_HEADERS_BY_STATUS = {"429": {"Retry-After": RETRY_AFTER}, "503": {"Retry-After": RETRY_AFTER}}


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (and in /docs)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = declare_errors(generate())
            restrict_backends(document, get_settings())
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def declare_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation's error responses as sent: ErrorBody, with Retry-After where it applies."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "responses" in operation:
                _declare(operation, expected_errors(path, method, operation))
    return document


def expected_errors(
    path: str, method: str, operation: dict[str, Any]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The error statuses an operation can answer with, besides those its route declares."""
    parameters = operation.get("parameters") or []
    expected: dict[str, tuple[str, dict[str, Any]]] = {}
    if path.startswith("/v1/"):
        expected |= _EVERY_V1_OPERATION
    if parameters:
        expected |= _WITH_PARAMETERS
    if any(p.get("in") == "path" for p in parameters):
        expected |= _WITH_PATH_PARAMETERS
    if "requestBody" in operation or method in _BODY_METHODS:
        expected |= _WITH_BODY
    return expected


def _declare(operation: dict[str, Any], expected: dict[str, tuple[str, dict[str, Any]]]) -> None:
    responses: dict[str, Any] = operation["responses"]
    if "422" in responses and "422" not in expected:
        del responses["422"]  # FastAPI's default, for an operation that validates nothing
    for status, (description, _) in expected.items():
        responses.setdefault(status, {"description": description})
    for status, response in responses.items():
        if not status.startswith(("4", "5")) or _declares_own_model(status, response):
            continue
        response["content"] = {"application/json": {"schema": ERROR_REF}}
        headers = {**_HEADERS_BY_STATUS.get(status, {}), **expected.get(status, ("", {}))[1]}
        if headers:
            response["headers"] = {**headers, **response.get("headers", {})}


def _declares_own_model(status: str, response: dict[str, Any]) -> bool:
    """A route's own schema for an error status (e.g. /healthz's 503 Health) is kept."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    return bool(ref) and not ref.endswith(("/ErrorBody", *_FASTAPI_ERROR_SCHEMAS))


def restrict_backends(document: dict[str, Any], settings: Settings) -> None:
    """Where a request names a backend (job options, a recipe's LLM writer), the names and models
    `check_backend` accepts. Only request schemas change: a stored job may still show a backend
    that has since been removed from the configuration."""
    schemas = document.get("components", {}).get("schemas", {})
    rule = backend_rule(settings)
    for name in ("JobCreate", "JobPreviewCreate"):
        job = schemas.get(name, {}).get("properties", {})
        if "options" in job:
            job["options"] = {"allOf": [job["options"], rule]}
    if "ApiRecipe" in schemas:
        template = {"properties": {"invert_writer": {"const": "template"}}}
        writer = {"anyOf": [template, {"properties": {"llm": rule}}]}
        schemas["ApiRecipe"].setdefault("allOf", []).append(writer)


def backend_rule(settings: Settings) -> dict[str, Any]:
    """Schema for GenerationOptions as `check_backend` sees them. (A judge's model on another
    backend is checked when the job is created; the document does not spell that out.)"""
    names: list[Any] = list(settings.backend_names())
    local_model = settings.embedded and settings.openai_base_url is None
    allowed = [*names, None] if settings.backend(None) is not None or local_model else names
    judge = {"properties": {"backend": {"enum": [*names, None]}}}
    steps = {step: judge for step in ("instruction", "answer", "faithfulness")}
    rule: dict[str, Any] = {
        "properties": {
            "backend": {"enum": allowed} if allowed else {"not": {}},
            "judges": {"properties": steps},
        }
    }
    models = [_models_rule(name, names, settings) for name in names]
    if any(models):
        rule["allOf"] = [m for m in models if m]
    return rule


def _models_rule(name: str, names: list[Any], settings: Settings) -> dict[str, Any] | None:
    """Either the job is on another backend, or its model is one `name` allows."""
    backend = settings.backend(name)
    if backend is None or not backend.models:
        return None
    others = [n for n in names if n != name]
    elsewhere: dict[str, Any] = {"properties": {"backend": {"enum": [*others, None]}}}
    if name == DEFAULT_BACKEND:  # an absent backend means this one
        elsewhere = {"required": ["backend"], "properties": {"backend": {"enum": others}}}
    allowed_models = {"properties": {"model": {"enum": [*backend.models, None]}}}
    return {"anyOf": [elsewhere, allowed_models]}
