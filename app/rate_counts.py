"""Sliding-window request counters for the rate limit (app/ratelimit.py): the math, the two stores, and the leases.

A limit of N per window W counts hits in fixed windows and weighs the previous window by the part of it still
inside the sliding window: `previous * (1 - elapsed / W) + current`. A hit fits while that plus one is at most N.

The stores grant hits in batches: `acquire` asks for up to `wanted` hits at once and gets what still fits. In
Redis that is one Lua script per round trip (all of a request's limits at once), atomic across API processes. An
API process keeps what it was granted as a local *lease* and spends it without asking Redis again until it runs out
or its window ends, so a busy key costs one round trip per lease instead of one per request. Leased hits are counted
in Redis when leased, so the limit is never exceeded; the price is that a key may be refused early by the hits other
processes hold leased but unspent (at most `(processes - 1) * lease` per window). A refusal is remembered until the
time the counts say a hit can fit again: other processes only ever add hits, so nothing could be granted sooner.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_LEASES = 10_000  # (limit, key) entries one process keeps (leases, in-process counts); old ones go past this


@dataclass(frozen=True)
class Ask:
    """Up to `wanted` hits of one limit (`amount` per `seconds`) for the counter named `key`."""

    key: str
    amount: int
    seconds: float
    wanted: int


@dataclass(frozen=True)
class Grant:
    """What a store granted: `granted` hits (0: refused), usable for `valid_seconds` (the rest of the window when
    granted; when refused, the time until a hit can fit again)."""

    granted: int
    valid_seconds: float


# ------------------------------------------------------------------------------------------------ the math


def room(previous: int, current: int, elapsed: float, seconds: float, amount: int) -> int:
    """How many more hits fit now, given the previous and current windows' counts and the time into this one."""
    weighted = previous * (1.0 - elapsed / seconds) + current
    return max(0, math.floor(amount - weighted))


def seconds_until_room(previous: int, current: int, elapsed: float, seconds: float, amount: int) -> float:
    """Seconds until one more hit fits if no other hit is counted meanwhile (0 when one fits now)."""
    space = amount - 1  # the weighted count must fall to this
    if room(previous, current, elapsed, seconds, amount) > 0:
        return 0.0
    if current <= space and previous > 0:  # the previous window's weight decays enough within this one
        wait = seconds * (1.0 - (space - current) / previous) - elapsed
        if wait <= seconds - elapsed:
            return max(0.0, wait)
    # After this window ends its count becomes the previous one and decays from there.
    after_end = seconds * (1.0 - space / current) if current > space else 0.0
    return (seconds - elapsed) + max(0.0, after_end)


def grant(previous: int, current: int, elapsed: float, ask: Ask) -> tuple[Grant, int]:
    """The grant for `ask` against the given counts, and the current window's count after it."""
    granted = min(ask.wanted, room(previous, current, elapsed, ask.seconds, ask.amount))
    if granted:
        return Grant(granted, ask.seconds - elapsed), current + granted
    return Grant(0, seconds_until_room(previous, current, elapsed, ask.seconds, ask.amount)), current


# ------------------------------------------------------------------------------------------------ stores


class CounterStore(Protocol):
    async def acquire(self, asks: Sequence[Ask]) -> list[Grant]:
        """Grant each ask what fits of it, counting the granted hits."""


class MemoryCounters:
    """Counts in this process (the embedded default: one API process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, _Windows] = {}

    async def acquire(self, asks: Sequence[Ask]) -> list[Grant]:
        now = time.time()
        grants = []
        with self._lock:
            for ask in asks:
                window = math.floor(now / ask.seconds)
                counts = self._counts.get(ask.key, _Windows(ask.seconds, window, 0, 0)).rolled(window)
                result, current = grant(counts.previous, counts.current, now - window * ask.seconds, ask)
                self._counts[ask.key] = _Windows(ask.seconds, window, counts.previous, current)
                grants.append(result)
            if len(self._counts) > MAX_LEASES:
                self._counts = {key: counts for key, counts in self._counts.items()
                                if counts.window >= math.floor(now / counts.seconds) - 1}
        return grants


@dataclass(frozen=True)
class _Windows:
    """One counter's previous and current window counts, `window` being the current window's number."""

    seconds: float
    window: int
    previous: int
    current: int

    def rolled(self, window: int) -> _Windows:
        """The counts as seen from `window` (the same, one window on, or none left)."""
        if window == self.window:
            return self
        if window == self.window + 1:
            return _Windows(self.seconds, window, self.current, 0)
        return _Windows(self.seconds, window, 0, 0)


# The counts of all of a request's limits in one round trip. Redis's own clock places the windows, so API processes
# with skewed clocks still share them. Per limit it returns the granted hits, the counts and microseconds elapsed.
ACQUIRE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local out = {}
for i, base in ipairs(KEYS) do
  local amount = tonumber(ARGV[3 * i - 2])
  local seconds = tonumber(ARGV[3 * i - 1])
  local wanted = tonumber(ARGV[3 * i])
  local window = math.floor(now / seconds)
  local elapsed = now - window * seconds
  local current_key = base .. ':' .. string.format('%d', window)
  local previous = tonumber(redis.call('GET', base .. ':' .. string.format('%d', window - 1)) or '0')
  local current = tonumber(redis.call('GET', current_key) or '0')
  local fits = math.floor(amount - (previous * (1 - elapsed / seconds) + current))
  local granted = math.max(0, math.min(wanted, fits))
  if granted > 0 then
    redis.call('INCRBY', current_key, granted)
    redis.call('EXPIRE', current_key, math.ceil(seconds * 2) + 1)
  end
  table.insert(out, granted)
  table.insert(out, previous)
  table.insert(out, current)
  table.insert(out, math.floor(elapsed * 1000000))
end
return out
"""


class RedisCounters:
    """Counts in Redis, shared by every API process of a deployment (one script call per acquire)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self._client: Any = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(ACQUIRE_SCRIPT)

    async def acquire(self, asks: Sequence[Ask]) -> list[Grant]:
        args: list[float | int] = []
        for ask in asks:
            args += [ask.amount, ask.seconds, ask.wanted]
        reply = await self._script(keys=[ask.key for ask in asks], args=args)
        grants = []
        for index, ask in enumerate(asks):
            granted, previous, current, elapsed_us = (int(value) for value in reply[4 * index: 4 * index + 4])
            elapsed = elapsed_us / 1e6
            if granted:
                grants.append(Grant(granted, ask.seconds - elapsed))
            else:
                grants.append(Grant(0, seconds_until_room(previous, current, elapsed, ask.seconds, ask.amount)))
        return grants


# ------------------------------------------------------------------------------------------------ leases


@dataclass
class _Lease:
    """Hits of one limit and key this process may spend without asking the store, until `until` (monotonic).
    A refusal is a lease of none that is not `spent`: it answers 429 until then without asking the store."""

    remaining: int
    until: float
    spent: bool = False


class LeasedCounter:
    """Spends local leases of each limit per key, asking the store (one call for all the limits that ran out) only
    when a lease is spent or expired. `lease_fraction` of a limit is asked for at once (at least one hit)."""

    def __init__(self, store: CounterStore, limits: Sequence[tuple[int, float]], lease_fraction: float) -> None:
        self.store = store
        self.limits = list(limits)
        self.lease_sizes = [max(1, math.floor(amount * lease_fraction)) for amount, _ in self.limits]
        self._leases: dict[tuple[int, str], _Lease] = {}
        self._refills: dict[str, asyncio.Future[Exception | None]] = {}  # a key's refill in flight: its error
        self._waiting: dict[str, int] = {}  # requests of a key waiting on its refill

    async def hit(self, identity: str) -> tuple[int, float] | None:
        """Count one request of `identity`: None when every limit lets it through, else the index of a limit it is
        over and the seconds until it fits again."""
        while spent := self._spent(identity):
            refill = self._refills.get(identity)
            if refill is not None:  # another request of this key is asking the store: share what it gets
                self._waiting[identity] = self._waiting.get(identity, 0) + 1
                try:
                    error = await refill
                finally:
                    self._release_waiter(identity)
                if error is not None:  # the store failed: so do the requests that waited on it, not one by one
                    raise error
                continue
            await self._refill(identity, spent)
        now = time.monotonic()
        leases = [self._leases[(index, identity)] for index in range(len(self.limits))]
        for index, lease in enumerate(leases):
            if lease.remaining <= 0:
                return index, max(0.0, lease.until - now)
        for lease in leases:
            lease.remaining -= 1
            lease.spent = lease.remaining == 0
        return None

    async def _refill(self, identity: str, spent: list[int]) -> None:
        """One store call for the spent limits of `identity`. Only one runs per key at a time: concurrent requests
        each leasing their own batch would hold more than one lease per process, beyond the documented tolerance.
        It asks for at least one hit for each request waiting on it, so they are served by one round trip (and a
        lease of one stays exact: every hit asked for is spent at once)."""
        done: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._refills[identity] = done
        wanted = 1 + self._waiting.get(identity, 0)
        error: Exception | None = None
        try:
            asks = [Ask(self._key(index, identity), *self.limits[index], max(self.lease_sizes[index], wanted))
                    for index in spent]
            grants = await self.store.acquire(asks)
            now = time.monotonic()
            for index, result in zip(spent, grants, strict=True):
                self._leases[(index, identity)] = _Lease(result.granted, now + result.valid_seconds)
            if len(self._leases) > MAX_LEASES:
                self._leases = {key: lease for key, lease in self._leases.items() if lease.until > now}
        except Exception as exc:
            error = exc
            raise
        finally:
            del self._refills[identity]
            done.set_result(error)

    def _release_waiter(self, identity: str) -> None:
        left = self._waiting[identity] - 1
        if left:
            self._waiting[identity] = left
        else:
            del self._waiting[identity]

    def _spent(self, identity: str) -> list[int]:
        """The limits whose lease of `identity` cannot answer: none yet, expired, or spent."""
        now = time.monotonic()
        return [index for index in range(len(self.limits)) if not self._usable(index, identity, now)]

    def _usable(self, index: int, identity: str, now: float) -> bool:
        """Whether the lease can answer without the store: hits left (or a refusal) in time."""
        lease = self._leases.get((index, identity))
        return lease is not None and lease.until > now and not lease.spent

    def _key(self, index: int, identity: str) -> str:
        amount, seconds = self.limits[index]
        return f"gkd:rate:{amount}/{seconds:g}:{identity}"
