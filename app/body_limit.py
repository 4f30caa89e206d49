"""A bound on every request body, counted as the bytes arrive (issue 20, finding 5).

A declared Content-Length over the bound is refused before a byte of the body is read; a body without one
(chunked) is counted message by message and refused as soon as the count passes the bound. The refusal is an
`HTTPException(413)` raised from `receive`, so the app's own handler answers with the error envelope and the
route's clean-up (a temporary upload file) runs as for any other error.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.store.settings import Settings
from app.uploads import form_allowance

LimitFor = Callable[[Scope], int]
"""The bound (bytes) for one request, from its scope (method and path)."""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


def too_large_response(limit: int) -> JSONResponse:
    """The envelope sent before the body is read; the connection closes (the unread body is not wanted)."""
    body = error_body("invalid_request_error", "payload_too_large", BodyTooLarge(limit).detail, None)
    return JSONResponse(body, status_code=413, headers={"Connection": "close"})


def declared_length(scope: Scope) -> int | None:
    """Content-Length as sent, or None when absent or not a plain decimal number (h11/httptools refuse those)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
    return None


class BodyLimitMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): the body keeps streaming to the route; only the count is added."""

    def __init__(self, app: ASGIApp, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await too_large_response(limit)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def limits_for(settings: Settings) -> LimitFor:
    """Uploads may carry their file's bound and the rest of a form; every other body, `max_request_bytes`.
    Read per request, so a bound changed on the settings object applies at once."""

    def limit_for(scope: Scope) -> int:
        if scope.get("method") == "POST":
            form = form_allowance(settings.max_form_fields, settings.max_form_field_bytes)
            path = scope.get("path", "").rstrip("/")
            if path == "/v1/datasets":
                return settings.max_dataset_bytes + form
            if path == "/v1/models":
                return settings.max_model_bytes + form
        return settings.max_request_bytes

    return limit_for
