"""A short-lived, per-process memory of which tenant an API key belongs to.

Every authenticated request would otherwise spend a database round trip (a connection check-out, the lookup and
its rollback) on the key before doing its own work. Entries live `Settings.api_key_cache_seconds`, so a revoked
key keeps working in each API process for at most that long. Only valid keys are remembered, under their
sha256 (never the plain key). One instance per app (`app.state.tenant_cache`), used from the event loop only,
so it needs no lock.

A hit hands out the entry's one detached `Tenant`, shared by the requests of that key: routes only read its
columns (it has no relationships, and no route adds the caller's tenant to a session), and building a fresh
instrumented object per request was 5 % of a job read's CPU (docs/performance.md).
"""

from __future__ import annotations

import time
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

    def put(self, digest: str, tenant: Tenant) -> None:
        if not self.enabled:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # many distinct keys within one TTL: start over rather than grow
        # A copy of the columns, detached, so that the caller's object (and any session it came from) is not shared.
        copy = Tenant(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
        make_transient_to_detached(copy)
        self._entries[digest] = _Entry(copy, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._entries.clear()
