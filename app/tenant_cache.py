"""A short-lived, per-process memory of which tenant an API key belongs to.

Every authenticated request would otherwise spend a database round trip (a connection check-out, the lookup and
its rollback) on the key before doing its own work. Entries live `Settings.api_key_cache_seconds`, so a revoked
key keeps working in each API process for at most that long. Only valid keys are remembered, under their
sha256 (never the plain key). One instance per app (`app.state.tenant_cache`), used from the event loop only,
so it needs no lock.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.orm import make_transient_to_detached

from app.orm import Tenant


class _Entry(NamedTuple):
    tenant_id: str
    name: str
    created_at: datetime
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
        """A fresh detached `Tenant` for the key's sha256, or None when unknown or expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._entries[digest]
            return None
        # A new object per request (like a row read from the database), so no two requests share one.
        tenant = Tenant(id=entry.tenant_id, name=entry.name, created_at=entry.created_at)
        make_transient_to_detached(tenant)
        return tenant

    def put(self, digest: str, tenant: Tenant) -> None:
        if not self.enabled:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # many distinct keys within one TTL: start over rather than grow
        self._entries[digest] = _Entry(tenant.id, tenant.name, tenant.created_at, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._entries.clear()
