"""The HTTP server around the app: uvicorn with the bounds the app cannot set itself (issue 20, findings 5 and 9).

- Header size: uvicorn's httptools parser keeps reading a request line and headers without limit (a 100 MB
  header was read whole). `bounded_headers_protocol` counts the bytes of a request until its headers are
  complete and answers 431 with the error envelope, closing the connection, once `max_header_bytes` is passed.
- Shutdown: on SIGTERM uvicorn waits for running requests, by default forever (a trickling upload held it
  over 60 s); `graceful_shutdown_seconds` bounds the wait, after which the requests are cancelled.

`gkd serve` and the container (`python -m app.server`) both start the server through `run`.
"""

from __future__ import annotations

import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import error_body
from app.store.settings import Settings


def header_overflow_response(limit: int) -> bytes:
    """A complete HTTP/1.1 431 with the envelope; the connection closes after it."""
    message = f"the request line and headers exceed the limit of {limit} bytes"
    body = json.dumps(error_body("invalid_request_error", "headers_too_large", message, None)).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def bounded_headers_protocol(limit: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, refusing a request whose line and headers pass `limit` bytes.

    Two counts: the bytes received while a request's headers are incomplete (checked after each read, so a
    header that never ends is cut within one read of the bound: memory stays bounded), and the size of the
    line and headers once complete (a whole oversized header block can arrive in one read)."""

    class BoundedHeadersProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes: int | None = 0  # None while a request's body streams (its headers are complete)
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_bytes is not None:
                self._head_bytes += len(data)
            super().data_received(data)
            over = self._head_bytes is not None and self._head_bytes > limit
            if (self._refused or over) and not self.transport.is_closing():
                self._refused = True
                self.logger.warning("request line and headers over %d bytes: 431", limit)
                self.transport.write(header_overflow_response(limit))
                self.transport.close()

        def on_headers_complete(self) -> None:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > limit:
                self._refused = True  # no ASGI task: data_received answers once the parser returns
                return
            self._head_bytes = None
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            self._head_bytes = 0  # the next request on this connection starts its own count
            super().on_message_complete()

    return BoundedHeadersProtocol


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the service; `overrides` for what a caller adds (proxy headers...)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": bounded_headers_protocol(settings.max_header_bytes),
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "log_level": "info",
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run(app: Any, settings: Settings, **overrides: Any) -> None:
    uvicorn.Server(server_config(app, settings, **overrides)).run()


def main() -> None:
    """The container's API process: this app on GKD_HOST:GKD_PORT, behind a proxy that sets X-Forwarded-*."""
    from app.main import create_app

    settings = Settings()
    run(create_app(settings), settings, proxy_headers=True)


if __name__ == "__main__":
    main()
