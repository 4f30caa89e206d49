"""The per-process API-key cache: one detached copy per key, gone after its TTL, never the caller's object."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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


Lookup = Callable[[], Awaitable[Tenant | None]]


def _lookups(result: Tenant | None | Exception) -> tuple[list[int], asyncio.Event, Lookup]:
    """A lookup that counts its calls and answers once `release` is set."""
    calls: list[int] = []
    release = asyncio.Event()

    async def lookup() -> Tenant | None:
        calls.append(1)
        await release.wait()
        if isinstance(result, Exception):
            raise result
        return result

    return calls, release, lookup


def test_concurrent_misses_of_a_key_share_one_lookup() -> None:
    async def main() -> None:
        cache = TenantCache(2.0)
        calls, release, lookup = _lookups(_tenant())
        waiters = [asyncio.create_task(cache.fetch("digest", lookup)) for _ in range(10)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one client goes away: the others still get their answer
        release.set()
        answers = await asyncio.gather(*waiters[1:])
        assert len(calls) == 1 and all(a is answers[0] for a in answers) and answers[0].id == "ten_1"
        assert waiters[0].cancelled()
        assert await cache.fetch("digest", lookup) is answers[0] and len(calls) == 1  # remembered
        unknown_calls, unknown_release, unknown = _lookups(None)
        unknown_release.set()
        assert await cache.fetch("other", unknown) is None and await cache.fetch("other", unknown) is None
        assert len(unknown_calls) == 2  # an invalid key is never remembered

    asyncio.run(main())


def test_a_failed_shared_lookup_fails_its_waiters_and_is_not_kept() -> None:
    async def main() -> None:
        cache = TenantCache(2.0)
        calls, release, lookup = _lookups(RuntimeError("database down"))
        waiters = [asyncio.create_task(cache.fetch("digest", lookup)) for _ in range(3)]
        await asyncio.sleep(0)
        release.set()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert len(calls) == 1 and all(isinstance(o, RuntimeError) for o in outcomes)
        ok_calls, ok_release, ok = _lookups(_tenant())
        ok_release.set()
        assert (await cache.fetch("digest", ok)) is not None and len(ok_calls) == 1  # tried again

    asyncio.run(main())


def test_a_disabled_cache_looks_up_for_every_request() -> None:
    """TTL 0: a revoked key fails on the very next request, so no request shares a lookup begun before it."""
    async def main() -> None:
        cache = TenantCache(0)
        calls, release, lookup = _lookups(_tenant())
        waiters = [asyncio.create_task(cache.fetch("digest", lookup)) for _ in range(4)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*waiters)
        assert len(calls) == 4

    asyncio.run(main())
