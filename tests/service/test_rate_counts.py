"""The rate limit's counters (app/rate_counts.py): the sliding-window math, the in-process store, and Redis leases
shared by several API processes (real Redis), whose limit holds within the documented tolerance."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.rate_counts import Ask, Grant, LeasedCounter, MemoryCounters, RedisCounters, room, seconds_until_room
from tests.service.test_api_basics import assert_error
from tests.service.test_capacity import app_settings, needs_redis
from tests.support.service import REDIS_URL, new_key

HOUR = 3600.0  # windows this long are not crossed during a test (a crossing would weigh the counts, not reset them)


# ------------------------------------------------------------------------------------------------ the math


def test_room_weighs_the_previous_window_by_what_is_left_of_it() -> None:
    assert room(0, 0, 0.0, 60.0, 3) == 3
    assert room(0, 3, 10.0, 60.0, 3) == 0
    assert room(6, 0, 30.0, 60.0, 4) == 1  # half of the previous window's 6 still counts
    assert room(10, 0, 0.0, 60.0, 4) == 0  # never negative


def test_seconds_until_room() -> None:
    assert seconds_until_room(0, 2, 10.0, 60.0, 3) == 0.0  # one fits now
    assert seconds_until_room(4, 0, 0.0, 60.0, 4) == pytest.approx(15.0)  # 4 * (1 - 15/60) = 3: one more fits
    # The current window is full: it ends in 50 s, then its 3 must decay to 2 (a third of the next window).
    assert seconds_until_room(0, 3, 10.0, 60.0, 3) == pytest.approx(70.0)
    # Both: the previous window's weight alone cannot free a hit before this window ends.
    assert seconds_until_room(2, 3, 30.0, 60.0, 3) == pytest.approx(50.0)


def test_memory_counters_grant_what_fits() -> None:
    async def scenario() -> tuple[int, int, float]:
        counters = MemoryCounters()
        first = (await counters.acquire([Ask("k", 3, HOUR, 5)]))[0]
        second = (await counters.acquire([Ask("k", 3, HOUR, 1)]))[0]
        other = (await counters.acquire([Ask("other", 3, HOUR, 1)]))[0]
        assert other.granted == 1  # its own count
        return first.granted, second.granted, second.valid_seconds

    granted, refused, wait = asyncio.run(scenario())
    assert (granted, refused) == (3, 0) and 0 < wait <= 2 * HOUR


# ------------------------------------------------------------------------------------------------ Redis leases


def _redis_count(identity: str, amount: int) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    return sum(int(client.get(key) or 0) for key in client.scan_iter(f"gkd:rate:{amount}/{HOUR:g}:{identity}:*"))


def test_a_lease_is_one_round_trip_for_several_requests() -> None:
    needs_redis()
    identity = f"test:{secrets.token_hex(6)}"

    async def scenario() -> list[tuple[int, float] | None]:
        counter = LeasedCounter(RedisCounters(REDIS_URL), [(40, HOUR)], lease_fraction=0.1)
        return [await counter.hit(identity) for _ in range(3)]

    assert asyncio.run(scenario()) == [None, None, None]
    assert _redis_count(identity, 40) == 4  # one lease of 4 counted in Redis, 3 of it spent locally


def test_the_limit_holds_across_processes_within_the_tolerance() -> None:
    """Two processes' counters on one key never let more than the limit through, and refuse early by at most the
    other process's unspent lease."""
    needs_redis()
    identity = f"test:{secrets.token_hex(6)}"

    async def scenario() -> tuple[int, int, int]:
        one = LeasedCounter(RedisCounters(REDIS_URL), [(40, HOUR)], lease_fraction=0.1)
        two = LeasedCounter(RedisCounters(REDIS_URL), [(40, HOUR)], lease_fraction=0.1)
        assert await one.hit(identity) is None  # one leases 4, spends 1
        allowed_two = 0
        while await two.hit(identity) is None:
            allowed_two += 1
        allowed_one = 1
        while await one.hit(identity) is None:
            allowed_one += 1
        return allowed_one, allowed_two, allowed_one + allowed_two

    allowed_one, allowed_two, total = asyncio.run(scenario())
    assert allowed_two == 40 - 4  # refused early by one's lease (tolerance: (2 - 1) x 4)
    assert total == 40  # one spends its lease later: exactly the limit, never more
    assert _redis_count(identity, 40) == 40


def test_a_refusal_is_answered_without_asking_redis_again() -> None:
    needs_redis()
    identity = f"test:{secrets.token_hex(6)}"
    client = redis.Redis.from_url(REDIS_URL)

    async def scenario() -> tuple[tuple[int, float] | None, tuple[int, float] | None]:
        counter = LeasedCounter(RedisCounters(REDIS_URL), [(100, HOUR), (2, HOUR)], lease_fraction=0.0)
        assert [await counter.hit(identity), await counter.hit(identity)] == [None, None]
        refused = await counter.hit(identity)
        for key in client.scan_iter(f"gkd:rate:*:{identity}:*"):
            client.delete(key)  # forgotten in Redis: the refusal still stands until its time
        return refused, await counter.hit(identity)

    refused, again = asyncio.run(scenario())
    assert refused is not None and refused[0] == 1 and 0 < refused[1] <= 2 * HOUR  # the second limit, its wait
    assert again is not None and again[0] == 1


# ------------------------------------------------------------------------------------------------ the middleware


def test_leased_limit_over_http_two_app_instances(sqlite_url: str, tmp_path: Path) -> None:
    """Two API instances sharing Redis: the key gets its limit (within one lease), 429 with Retry-After and the
    envelope past it, and another key keeps its own count."""
    needs_redis()
    settings = app_settings(tmp_path, sqlite_url, rate_limit="20/hour", rate_limit_storage=REDIS_URL,
                            rate_limit_lease=0.1)
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    other = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as one, \
            TestClient(create_app(settings), raise_server_exceptions=False) as two:
        codes = [client.get("/v1/jobs", headers=auth).status_code for _ in range(15) for client in (one, two)]
        assert codes.count(200) == 20 and codes[:20] == [200] * 20 and set(codes[20:]) == {429}
        refused = two.get("/v1/datasets", headers=auth)
        error = assert_error(refused, 429, "rate_limit_error", param=None)
        assert error["code"] == "rate_limited" and "20 per 1 hour" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 2 * 3600
        assert one.get("/v1/jobs", headers=other).status_code == 200


def test_concurrent_requests_of_a_key_share_one_refill() -> None:
    """Many requests of one key arriving together lease once at a time, so none of the limit is lost to leases
    overwritten by concurrent refills: exactly the limit gets through."""
    needs_redis()
    identity = f"test:{secrets.token_hex(6)}"

    async def scenario() -> list[tuple[int, float] | None]:
        counter = LeasedCounter(RedisCounters(REDIS_URL), [(40, HOUR)], lease_fraction=0.1)
        return list(await asyncio.gather(*(counter.hit(identity) for _ in range(45))))

    results = asyncio.run(scenario())
    assert results.count(None) == 40 and all(result is not None for result in results[40:])
    assert _redis_count(identity, 40) == 40


def test_a_refill_serves_every_request_waiting_on_it() -> None:
    """With a lease of one (exact counting), requests of a key that arrive together do not queue for a round trip
    each: the refill asks for one hit per waiting request, and no hit is left over."""
    needs_redis()
    identity = f"test:{secrets.token_hex(6)}"
    calls: list[int] = []

    class CountingRedis(RedisCounters):
        async def acquire(self, asks: Sequence[Ask]) -> list[Grant]:
            calls.append(asks[0].wanted)
            return await super().acquire(asks)

    async def scenario() -> list[tuple[int, float] | None]:
        counter = LeasedCounter(CountingRedis(REDIS_URL), [(1000, HOUR)], lease_fraction=0.0)
        return list(await asyncio.gather(*(counter.hit(identity) for _ in range(16))))

    assert asyncio.run(scenario()) == [None] * 16
    assert len(calls) == 2 and calls == [1, 15]  # the first request's round trip, then one for the 15 waiting
    assert _redis_count(identity, 1000) == 16


def test_a_failed_refill_fails_the_requests_waiting_on_it_at_once() -> None:
    """Redis unreachable: the requests of a key waiting on the failed refill fail with it (the middleware then lets
    them through) instead of each trying the store again in turn."""
    calls: list[int] = []

    class CountingRedis(RedisCounters):
        async def acquire(self, asks: Sequence[Ask]) -> list[Grant]:
            calls.append(asks[0].wanted)
            return await super().acquire(asks)

    async def scenario() -> list[object]:
        counter = LeasedCounter(CountingRedis("redis://127.0.0.1:9/0"), [(1000, HOUR)], lease_fraction=0.0)
        return list(await asyncio.gather(*(counter.hit("test:down") for _ in range(5)), return_exceptions=True))

    results = asyncio.run(scenario())
    assert all(isinstance(result, redis.exceptions.ConnectionError) for result in results)
    assert calls == [1]
