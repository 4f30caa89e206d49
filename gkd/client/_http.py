"""The HTTP layer: base URL and key resolution, error mapping, retries with exponential backoff + jitter.

Retried: connection failures before anything was sent (any method), and, for safe requests only (GET/HEAD,
or any request carrying an `Idempotency-Key`), other transport errors, 429 and 5xx. `Retry-After` is
honoured (capped). Everything else raises at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from gkd import __version__
from gkd.client.errors import APIConnectionError, APITimeoutError, GkdError, from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0


# Names an earlier README used; still read, with a warning, so an old shell keeps working (docs/client.md).
DEPRECATED_ENV = {"GKD_BASE_URL": "GKD_URL", "GKD_API_KEY": "GKD_KEY"}


def env_setting(name: str) -> str | None:
    """The environment's `name`, else its deprecated alias, with a FutureWarning (shown by default) naming `name`."""
    value = os.environ.get(name)
    if value:
        return value
    alias = DEPRECATED_ENV.get(name)
    value = os.environ.get(alias) if alias else None
    if value:
        warnings.warn(f"{alias} is deprecated: set {name} instead", FutureWarning, stacklevel=3)
    return value or None


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or env_setting("GKD_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


LOCAL_KEY_FILE = "local_api_key"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def local_api_key(home: str | Path | None = None) -> str | None:
    """The key a local `gkd serve` (`make run`) keeps in HOME/local_api_key; HOME is GKD_HOME, else `var`."""
    path = Path(home if home is not None else os.environ.get("GKD_HOME", "var")) / LOCAL_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def resolve_api_key(api_key: str | None, base_url: str = DEFAULT_BASE_URL) -> str | None:
    """The argument, else GKD_API_KEY, else, for a server on this machine only, the local server's key file
    (so a client beside `make run` needs no setup, and no key from disk is ever sent to another host)."""
    key = api_key or env_setting("GKD_API_KEY")
    if key:
        return key
    if (urlsplit(base_url).hostname or "") in _LOOPBACK_HOSTS:
        return local_api_key()
    return None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full-range jitter on 0.5 * 2**attempt."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), 60.0)
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def is_safe(method: str, headers: Mapping[str, str]) -> bool:
    return method.upper() in SAFE_METHODS or any(k.lower() == "idempotency-key" for k in headers)


def may_retry_transport(exc: httpx.TransportError, safe: bool) -> bool:
    # Nothing reached the server when the connection could not even be opened.
    return safe or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def connection_error(exc: Exception, url: str) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out: {type(exc).__name__}")
    return APIConnectionError(f"could not reach the gkd service at {url}: {type(exc).__name__}: {exc}")


def error_from_response(response: httpx.Response) -> GkdError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return from_response(response.status_code, body, response.text, response.headers.get("x-request-id"))


def _rewind(files: Any) -> None:
    """Rewind file objects of a multipart body so a retried request sends them again."""
    if not files:
        return
    for value in dict(files).values():
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "seek"):
            handle.seek(0)


class _Base:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key, self.base_url)
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.headers = {"User-Agent": f"gkd-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"
        self.headers.update(headers or {})

    def build(self, client: httpx.Client | httpx.AsyncClient, method: str, path: str, *, params: Any = None,
              json: Any = None, files: Any = None, data: Any = None, headers: Mapping[str, str] | None = None,
              timeout: Any = None) -> httpx.Request:
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        return client.build_request(
            method,
            path,
            params=params or None,
            json=json,
            files=files,
            data=data,
            headers=headers,
            timeout=self.timeout if timeout is None else timeout,
        )


class SyncHTTP(_Base):
    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float | httpx.Timeout | None,
                 max_retries: int, transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, headers)
        self.client = httpx.Client(base_url=self.base_url, headers=self.headers, transport=transport,
                                   timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, *, stream: bool = False, retries: int | None = None,
                **kwargs: Any) -> httpx.Response:
        """Send with retries; return the response (2xx/3xx) or raise the mapped error."""
        retries = self.max_retries if retries is None else retries
        safe = is_safe(method, kwargs.get("headers") or {})
        attempt = 0
        while True:
            _rewind(kwargs.get("files"))
            request = self.build(self.client, method, path, **kwargs)
            try:
                response = self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < retries and may_retry_transport(exc, safe):
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise connection_error(exc, self.base_url) from exc
            if response.status_code < 400:
                return response
            if attempt < retries and safe and response.status_code in RETRY_STATUSES:
                response.close()
                time.sleep(backoff(attempt, retry_after_seconds(response)))
                attempt += 1
                continue
            try:
                response.read()
            except httpx.TransportError:
                pass
            finally:
                response.close()
            raise error_from_response(response)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        response = self.request(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()


class AsyncHTTP(_Base):
    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float | httpx.Timeout | None,
                 max_retries: int, transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, headers)
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, transport=transport,
                                        timeout=timeout)

    async def close(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, *, stream: bool = False, retries: int | None = None,
                      **kwargs: Any) -> httpx.Response:
        retries = self.max_retries if retries is None else retries
        safe = is_safe(method, kwargs.get("headers") or {})
        attempt = 0
        while True:
            _rewind(kwargs.get("files"))
            request = self.build(self.client, method, path, **kwargs)
            try:
                response = await self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < retries and may_retry_transport(exc, safe):
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise connection_error(exc, self.base_url) from exc
            if response.status_code < 400:
                return response
            if attempt < retries and safe and response.status_code in RETRY_STATUSES:
                await response.aclose()
                await asyncio.sleep(backoff(attempt, retry_after_seconds(response)))
                attempt += 1
                continue
            try:
                await response.aread()
            except httpx.TransportError:
                pass
            finally:
                await response.aclose()
            raise error_from_response(response)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        return response.json()

    @asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        response = await self.request(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            await response.aclose()
