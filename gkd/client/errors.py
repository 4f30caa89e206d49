"""Exceptions raised by the client, built from the service's error envelope
`{"error": {"type", "code", "message", "param"}}`."""

from __future__ import annotations

from typing import Any


class GkdError(Exception):
    """Base class of every client error. HTTP errors carry the envelope's fields."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.body = body
        self.request_id = request_id

    def __str__(self) -> str:
        parts = []
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.code:
            parts.append(self.code)
        prefix = f"[{' '.join(parts)}] " if parts else ""
        suffix = f" (param: {self.param})" if self.param else ""
        return f"{prefix}{self.message}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {"status_code": self.status_code, "type": self.type, "code": self.code, "message": self.message,
                "param": self.param}


class InvalidRequestError(GkdError):
    """400, 422 (and other 4xx the service calls `invalid_request_error`, e.g. 415)."""


class AuthenticationError(GkdError):
    """401: missing, unknown or revoked API key."""


class PermissionDeniedError(GkdError):
    """403."""


class NotFoundError(GkdError):
    """404: unknown id, or another tenant's resource."""


class ConflictError(GkdError):
    """409: e.g. cancelling a finished job, deleting a dataset in use, an Idempotency-Key reused."""


class PayloadTooLargeError(GkdError):
    """413: the upload exceeds the service's size limit."""


class RateLimitError(GkdError):
    """429."""


class ServerError(GkdError):
    """5xx."""


class APIConnectionError(GkdError):
    """The service could not be reached, or the connection broke (after the retries)."""


class APITimeoutError(APIConnectionError):
    """A request timed out (after the retries)."""


class ChecksumError(GkdError):
    """A downloaded file does not have the sha256 the service announced."""


class UnsafeArchiveError(GkdError):
    """A downloaded archive holds links, devices or paths leaving the target directory."""


class WaitTimeoutError(GkdError, TimeoutError):
    """`jobs.wait(..., timeout=...)` ran out before the job finished."""


_BY_STATUS: dict[int, type[GkdError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_class(status_code: int) -> type[GkdError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    if 400 <= status_code < 500:
        return InvalidRequestError
    return GkdError


def from_response(status_code: int, body: Any, text: str = "", request_id: str | None = None) -> GkdError:
    """The exception for an HTTP error response; tolerant of bodies that are not the envelope."""
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict):
        message = str(envelope.get("message") or f"HTTP {status_code}")
        return error_class(status_code)(
            message,
            status_code=status_code,
            type=envelope.get("type"),
            code=envelope.get("code"),
            param=envelope.get("param"),
            body=body,
            request_id=request_id,
        )
    message = (text or "").strip()[:500] or f"HTTP {status_code}"
    return error_class(status_code)(message, status_code=status_code, body=body, request_id=request_id)
