"""A short-lived, per-process memory of which tenant an API key belongs to.

Every authenticated request would otherwise spend a database round trip (a connection check-out, the lookup and
its rollback) on the key before doing its own work. Entries live `Settings.api_key_cache_seconds`, so a revoked
key keeps working in each API process for at most that long. Only valid keys are remembered, under their
sha256 (never the plain key). One instance per app (`app.state.tenant_cache`), used from the event loop only,
so it needs no lock.

A hit hands out the entry's one detached `Tenant`, shared by the requests of that key: routes only read its
columns (it has no relationships, and no route adds the caller's tenant to a session), and building a fresh
instrumented object per request was 5 % of a job read's CPU (docs/performance.md).

Concurrent misses of one key share one lookup (`fetch`): when an entry expires under load, or a burst of event
streams opens on a process that has not seen the key yet, one database read answers them all instead of one each
(100 streams opened at once made 100 lookups, each with its own session, in the thread pool). The shared lookup
started before the requests that join it arrived, which the TTL allows; with the cache disabled (TTL 0: a revoked
key must fail on the very next request) every request does its own lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from sqlalchemy.orm import make_transient_to_detached

from app.store.orm import Tenant


class _Entry(NamedTuple):
    tenant: Tenant
    expires: float


class TenantCache:
    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._lookups: dict[str, asyncio.Task[Tenant | None]] = {}  # in flight, by digest

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, digest: str) -> Tenant | None:
        """The detached `Tenant` of the key's sha256, or None when unknown or expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._entries[digest]
            return None
        return entry.tenant

    async def fetch(self, digest: str, lookup: Callable[[], Awaitable[Tenant | None]]) -> Tenant | None:
        """The key's tenant from memory, else from `lookup()` (None: no such valid key), shared with the requests
        of the same key already waiting for one. Valid keys are remembered."""
        tenant = self.get(digest) if self.enabled else None
        if tenant is not None:
            return tenant
        if not self.enabled:
            return await lookup()
        loop = asyncio.get_running_loop()
        task = self._lookups.get(digest)
        if task is None or task.get_loop() is not loop:  # another loop's (an app served again): not ours to await
            task = loop.create_task(self._remembered(digest, lookup))
            self._lookups[digest] = task
            task.add_done_callback(lambda done: self._forget(digest, done))
        # Shielded: a waiter that goes away (its client disconnected) does not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _remembered(self, digest: str, lookup: Callable[[], Awaitable[Tenant | None]]) -> Tenant | None:
        tenant = await lookup()
        # Every waiter gets the entry's copy, as a later hit does.
        return self.put(digest, tenant) if tenant is not None else None

    def _forget(self, digest: str, done: asyncio.Task[Tenant | None]) -> None:
        if self._lookups.get(digest) is done:
            del self._lookups[digest]
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody awaited any more is not logged as lost

    def put(self, digest: str, tenant: Tenant) -> Tenant:
        """Remembers a copy of `tenant` (returned) for the TTL; a disabled cache returns `tenant` itself."""
        if not self.enabled:
            return tenant
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # many distinct keys within one TTL: start over rather than grow
        # A copy of the columns, detached, so that the caller's object (and any session it came from) is not shared.
        copy = Tenant(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
        make_transient_to_detached(copy)
        self._entries[digest] = _Entry(copy, time.monotonic() + self.ttl)
        return copy

    def clear(self) -> None:
        self._entries.clear()
