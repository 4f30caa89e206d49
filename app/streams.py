"""A cap on the event streams (SSE) one tenant holds open at once (`GKD_SSE_STREAMS_PER_TENANT`).

Each open stream holds a database poll and, with Redis, a pub/sub connection shared with the broker's server, so one
tenant opening thousands could starve the others. A stream takes a slot when it opens and gives it back when it ends.

With Redis (the notify URL) the slots of all API processes are one sorted set per tenant, each member scored with
its expiry: a stream renews its slot while it runs, so the slots of an API process that died expire by themselves
instead of leaking. Without Redis (the embedded default: one API process) they are counted in the process.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from app.store.settings import Settings

log = logging.getLogger(__name__)

SLOT_SECONDS = 60.0  # a slot not renewed for this long is free again (streams renew every keep-alive or sooner)


class StreamSlots:
    """Slots in this process (one API process: the embedded default)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self._held: dict[str, set[str]] = {}

    @staticmethod
    def for_settings(settings: Settings) -> StreamSlots:
        if settings.notify_url:
            return RedisStreamSlots(settings.sse_streams_per_tenant, settings.notify_url)
        return StreamSlots(settings.sse_streams_per_tenant)

    def acquire(self, tenant_id: str) -> str | None:
        """A slot id for a new stream of `tenant_id`, or None when the tenant holds all of its slots."""
        with self._lock:
            held = self._held.setdefault(tenant_id, set())
            if len(held) >= self.per_tenant:
                return None
            slot = secrets.token_hex(8)
            held.add(slot)
            return slot

    def renew(self, tenant_id: str, slot: str) -> None:
        """Keep the slot of a running stream (a no-op in process)."""

    def release(self, tenant_id: str, slot: str) -> None:
        with self._lock:
            held = self._held.get(tenant_id)
            if held is not None:
                held.discard(slot)
                if not held:
                    del self._held[tenant_id]


class RedisStreamSlots(StreamSlots):
    """Slots shared by every API process through Redis (see the module docstring). If Redis cannot be reached the
    stream is let through: the cap is a guard, not a reason to refuse service during a broker outage."""

    def __init__(self, per_tenant: int, url: str) -> None:
        super().__init__(per_tenant)
        self.url = url
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        return self._client

    @staticmethod
    def _key(tenant_id: str) -> str:
        return f"gkd:streams:{tenant_id}"

    def acquire(self, tenant_id: str) -> str | None:
        slot, now, key = secrets.token_hex(8), time.time(), self._key(tenant_id)
        try:
            pipe = self._redis().pipeline()  # MULTI/EXEC: drop expired slots, add ours, count
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {slot: now + SLOT_SECONDS})
            pipe.zcard(key)
            pipe.expire(key, int(SLOT_SECONDS) + 1)
            held = pipe.execute()[2]
            if held > self.per_tenant:
                self._redis().zrem(key, slot)
                return None
        except Exception as exc:  # noqa: BLE001
            log.warning("stream slots unavailable (%s); the stream is not counted", exc)
        return slot

    def renew(self, tenant_id: str, slot: str) -> None:
        try:
            key = self._key(tenant_id)
            self._redis().zadd(key, {slot: time.time() + SLOT_SECONDS}, xx=True)
            self._redis().expire(key, int(SLOT_SECONDS) + 1)
        except Exception as exc:  # noqa: BLE001
            log.debug("renewing a stream slot failed: %s", exc)

    def release(self, tenant_id: str, slot: str) -> None:
        try:
            self._redis().zrem(self._key(tenant_id), slot)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.debug("releasing a stream slot failed: %s", exc)
