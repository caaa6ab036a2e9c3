"""Request body limits, enforced before any route reads a body.

File uploads (multipart) stream to temporary files, so they are counted as they arrive and cut off
at their route's limit. Every other body (JSON) is read into memory by the framework, so it is
capped tighter, and its nesting is checked before `json.loads` could recurse into it.
"""

from __future__ import annotations

import anyio
from fastapi import HTTPException, UploadFile
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.errors import AppError, InvalidInput, PayloadTooLarge, error_response
from app.selfinstruct.untrusted import MAX_JSON_DEPTH, exceeds_depth

# Boundaries and part headers around the file and the small form fields.
MULTIPART_OVERHEAD = 64 * 1024
_SCAN_IN_THREAD = 1024 * 1024  # bodies above this are scanned off the event loop


def upload_limit(path: str, settings: Settings) -> int | None:
    """The largest file the upload route at `path` takes, or None for routes without uploads."""
    limits = {
        "/v1/datasets": settings.max_dataset_upload_bytes,
        "/v1/seed-sets": settings.max_seed_upload_bytes,
    }
    return limits.get(path.rstrip("/"))


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads a body: FastAPI's body parsing lets HTTPException
    through unchanged (anything else would become a 400), and the handlers turn it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over their limit (by Content-Length at once, else while they stream) and
    422 for JSON nested deeper than MAX_JSON_DEPTH."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        upload = upload_limit(scope["path"], settings) if multipart else None
        limit = upload + MULTIPART_OVERHEAD if upload is not None else settings.max_json_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(PayloadTooLarge(BodyTooLarge(limit).detail), scope, receive, send)
        elif multipart:
            await self.app(scope, _counted(receive, limit), send)
        else:
            await self._buffered(scope, receive, send, limit)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read the whole (small) body, check it, then hand it to the app as one message."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see that
                await self.app(scope, _replay(message, receive), send)
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _answer(PayloadTooLarge(BodyTooLarge(limit).detail), scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        data = bytes(body)
        if len(data) > _SCAN_IN_THREAD:
            too_deep = await anyio.to_thread.run_sync(exceeds_depth, data)
        else:
            too_deep = exceeds_depth(data)
        if too_deep:
            message_text = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            error = InvalidInput(
                f"body: {message_text}", errors=[{"field": "body", "message": message_text}]
            )
            await _answer(error, scope, receive, send)
            return
        await self.app(scope, _replay({"type": "http.request", "body": data}, receive), send)


def _counted(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def _replay(first: Message, receive: Receive) -> Receive:
    """`first`, then whatever the client sends next (a disconnect, for streamed responses)."""
    pending: list[Message] = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _answer(error: AppError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)


def upload_too_large(file: UploadFile, limit: int) -> PayloadTooLarge | None:
    """The 413 for an uploaded file over `limit` bytes (its size is known once it is spooled)."""
    size = file.size
    if size is None:
        size = file.file.seek(0, 2)
        file.file.seek(0)
    if size > limit:
        return PayloadTooLarge(f"file: larger than {limit} bytes")
    return None


def upload_name(given: str | None, file: UploadFile, fallback: str) -> str:
    """The name to store: the form's, else the file's (trimmed to the column, without control
    characters that the database refuses), else `fallback`."""
    if given:
        return given
    filename = "".join(c for c in (file.filename or "") if c.isprintable()).strip()
    return filename[:200] or fallback
