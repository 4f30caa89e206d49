"""What counting one request against the rate limit costs the API process, without the rest of the request.

Each variant counts `--requests` hits of one key (`--concurrency` of them in flight at once, as wrk's connections
are) against a limit far above them, so none is refused, and reports the process's CPU per hit (the Redis server's
own CPU is not included, as the API benchmark's server CPU does not include it). Variants alternate within each
round, so a busy machine weighs on all of them alike:

- `old`: the `limits` library's sliding window counter in Redis, as app/ratelimit.py did before leases;
- `lua`: app/rate_counts.py with `GKD_RATE_LIMIT_LEASE=0` (at most one Lua round trip per request);
- `lease5`: leases of 5 hits (what the default 100/second leases at the default 5 %);
- `lease`: the default 5 % of the limit (50,000 hits at 1000000/second);
- `memory`: the embedded default's in-process counter.

    python -m benchmarks.rate_limit --rounds 5 --requests 20000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from app.rate_counts import LeasedCounter, MemoryCounters, RedisCounters
from benchmarks import common
from benchmarks.api import REDIS_URL

LIMIT = (1_000_000, 1.0)
VARIANTS = ("old", "lua", "lease5", "lease", "memory")

Hit = Callable[[str], Awaitable[bool]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000, help="hits per variant and round")
    parser.add_argument("--concurrency", type=int, default=16, help="hits of the key in flight at once")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None, help="JSON file for the rounds and medians")
    return parser.parse_args(argv)


def make_hit(variant: str, redis_url: str) -> Hit:
    """A function counting one hit of a key for `variant`, True when let through."""
    if variant == "old":
        from limits import RateLimitItemPerSecond
        from limits.aio.strategies import SlidingWindowCounterRateLimiter
        from limits.storage import storage_from_string

        item = RateLimitItemPerSecond(LIMIT[0])
        limiter = SlidingWindowCounterRateLimiter(storage_from_string(
            f"async+{redis_url}", implementation="redispy", socket_timeout=0.5, socket_connect_timeout=0.5))

        async def old(identity: str) -> bool:
            return bool(await limiter.hit(item, identity))

        return old
    fraction = {"lua": 0.0, "lease5": 5 / LIMIT[0], "lease": 0.05, "memory": 0.0}[variant]
    store = MemoryCounters() if variant == "memory" else RedisCounters(redis_url)
    counter = LeasedCounter(store, [LIMIT], fraction)

    async def new(identity: str) -> bool:
        return await counter.hit(identity) is None

    return new


async def measure(variant: str, requests: int, concurrency: int, redis_url: str) -> dict[str, Any]:
    hit = make_hit(variant, redis_url)
    identity = f"bench:{secrets.token_hex(6)}"
    await hit(identity)  # connections and scripts loaded before the clock starts
    refused = 0

    async def worker(count: int) -> None:
        nonlocal refused
        for _ in range(count):
            refused += not await hit(identity)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = requests // concurrency * concurrency
    return {"variant": variant, "requests": done, "refused": refused, "cpu_us_per_hit": round(cpu / done * 1e6, 2),
            "hits_per_second": round(done / wall)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = [name for name in args.variants.split(",") if name]
    runs = []
    for round_number in range(1, args.rounds + 1):
        for variant in variants:
            run = asyncio.run(measure(variant, args.requests, args.concurrency, args.redis_url))
            runs.append({"round": round_number, **run})
            print(f"round {round_number} {variant:7s} {run['cpu_us_per_hit']:8.2f} us CPU/hit "
                  f"{run['hits_per_second']:7d} hits/s refused {run['refused']}", flush=True)
    medians = {variant: statistics.median(run["cpu_us_per_hit"] for run in runs if run["variant"] == variant)
               for variant in variants}
    print("median CPU per hit: " + ", ".join(f"{name} {value:.2f} us" for name, value in medians.items()))
    report = {"benchmark": "rate_limit", "environment": common.environment(argv),
              "background": common.background_load(),
              "settings": {"rounds": args.rounds, "requests": args.requests, "concurrency": args.concurrency,
                           "limit": f"{LIMIT[0]}/second"},
              "runs": runs, "median_cpu_us_per_hit": medians}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
