"""The per-process API-key cache: one detached copy per key, gone after its TTL, never the caller's object."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect

from app.store.orm import Tenant
from app.tenant_cache import TenantCache


def _tenant() -> Tenant:
    return Tenant(id="ten_1", name="acme", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_hit_returns_a_detached_copy_with_the_columns(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("app.tenant_cache.time.monotonic", lambda: clock[0])
    cache = TenantCache(2.0)
    original = _tenant()
    cache.put("digest", original)

    hit = cache.get("digest")
    assert hit is not None and hit is not original
    assert (hit.id, hit.name, hit.created_at) == (original.id, original.name, original.created_at)
    assert inspect(hit).detached  # a session cannot have it: it is nobody's pending object
    assert cache.get("digest") is hit  # the same copy for every request of that key

    clock[0] += 2.0
    assert cache.get("digest") is None  # expired: the next request reads the database (and sees a revocation)
    assert cache.get("digest") is None


def test_a_disabled_cache_remembers_nothing() -> None:
    cache = TenantCache(0)
    cache.put("digest", _tenant())
    assert not cache.enabled and cache.get("digest") is None
