"""Per-key rate limits on every route: a pure ASGI middleware in front of the app (limits in `limits` notation).

Requests are counted per API key (a digest of the bearer token; without one, per client address) in a sliding
window (app/rate_counts.py). The counters live in Redis when the broker is Redis, so every API process of a
deployment shares them, and in the process on the embedded default (one API process). With Redis each process
leases a small share of a limit (`GKD_RATE_LIMIT_LEASE`) and spends it locally: one round trip per lease, not per
request. A request over the limit is answered 429 `rate_limit_error` with `Retry-After`, before routing,
authentication or any database work. The health probes (`/healthz`, `/readyz`) are not counted: load balancers call
them without a key.

If the counter store fails (Redis down), requests are let through and the store is not asked again for a few
seconds: a broker outage must not take the API down with it (docs/design.md "Quotas and rate limits").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time

from limits import RateLimitItem, parse_many
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body
from app.rate_counts import CounterStore, LeasedCounter, MemoryCounters, RedisCounters
from app.store.settings import Settings

log = logging.getLogger(__name__)

UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz"})
STORE_DOWN_SECONDS = 5.0


def storage_url(settings: Settings) -> str:
    """Where the counters live: GKD_RATE_LIMIT_STORAGE, else the broker's Redis, else this process's memory."""
    return settings.rate_limit_storage or (
        settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else "memory://")


def counter_store(url: str) -> CounterStore:
    return MemoryCounters() if url.startswith("memory://") else RedisCounters(url)


class RateLimitMiddleware:
    """Counts each request against its key's limits; answers 429 with `Retry-After` past one."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.items: list[RateLimitItem] = parse_many(settings.rate_limit)
        url = storage_url(settings)
        # In process a lease saves nothing (the count is a dict lookup either way), so it stays one hit.
        lease = 0.0 if url.startswith("memory://") else settings.rate_limit_lease
        limits = [(item.amount, float(item.get_expiry())) for item in self.items]
        self.counter = LeasedCounter(counter_store(url), limits, lease)
        self.store_down_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS or time.monotonic() < self.store_down_until:
            await self.app(scope, receive, send)
            return
        identity = _identity(scope)
        try:
            over = await self.counter.hit(identity)
            if over is not None:
                await _refuse(send, self.items[over[0]], over[1])
                return
        except Exception as exc:  # noqa: BLE001 - a counter store outage lets requests through
            self.store_down_until = time.monotonic() + STORE_DOWN_SECONDS
            log.warning("rate limit store failed (%s); not limiting for %.0f s", exc, STORE_DOWN_SECONDS)
        await self.app(scope, receive, send)


def _identity(scope: Scope) -> str:
    """The key's digest (the raw key never reaches the store), else the client address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return "key:" + hashlib.sha256(value.strip()).hexdigest()[:32]
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


async def _refuse(send: Send, item: RateLimitItem, seconds: float) -> None:
    retry_after = max(1, math.ceil(seconds))
    body = json.dumps(error_body(
        "rate_limit_error", "rate_limited",
        f"too many requests for this API key: the limit is {item}; retry after {retry_after} s", None,
    )).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
