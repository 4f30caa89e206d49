"""Redis housekeeping for throwaway per-run queues (tests, benchmarks) on a shared Redis."""

from __future__ import annotations


def forget_redis_queue(broker_url: str, queue: str) -> None:
    """Delete a queue and kombu's bindings for it from a Redis broker (a no-op for other brokers).

    Housekeeping for throwaway per-run queues (tests, benchmarks) on a shared Redis; never raises."""
    if not broker_url.startswith("redis"):
        return
    try:
        import redis

        client = redis.Redis.from_url(broker_url, socket_timeout=2)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()
    except Exception:  # noqa: BLE001 - housekeeping only
        pass
