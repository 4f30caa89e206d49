"""A job's events, numbered 1, 2, 3... per job, and the Redis wake-up that tells event streams a new one is there.

Event numbering: `append_event` bumps `jobs.last_seq` with an UPDATE first, which takes the job's row
lock (PostgreSQL) or the database write lock (SQLite) until the transaction ends, so concurrent writers
queue up, and a rolled back transaction gives its number back: seq is 1, 2, 3... per job, no gaps.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.orm import Job, JobEvent, utcnow
from app.store.webhook_outbox import record_event

log = logging.getLogger(__name__)

MAX_SEQ = 2**31 - 1
"""The largest seq the `INTEGER` column holds on every backend: a larger `after` or `Last-Event-ID` is refused."""


def append_event(
    session: Session, job_id: str, type_: str, message: str = "", data: dict[str, Any] | None = None
) -> JobEvent:
    """Insert the job's next event inside the caller's transaction (see module docstring)."""
    session.execute(
        update(Job).where(Job.id == job_id).values(last_seq=Job.last_seq + 1).execution_options(
            synchronize_session=False
        )
    )
    seq = session.scalar(select(Job.last_seq).where(Job.id == job_id))
    if seq is None:
        raise LookupError(f"job {job_id} does not exist")
    event = JobEvent(job_id=job_id, seq=seq, type=type_, message=message, data=data or {}, created_at=utcnow())
    session.add(event)
    session.flush()
    return event


def status_event(session: Session, job_id: str, status: str, message: str = "") -> JobEvent:
    """The job's status event, and its webhook deliveries (`job.<status>`) in the same transaction."""
    event = append_event(session, job_id, "status", message or f"job {status}", {"status": status})
    record_event(session, job_id, f"job.{status}", {"job_id": job_id, "status": status, "message": event.message})
    return event


def event_dict(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "event",
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "type": event.type,
        "message": event.message,
        "data": event.data,
    }


def notify(notify_url: str | None, job_id: str) -> None:
    """Wake SSE streams of `job_id` (Redis pub/sub); best effort, streams poll the database anyway."""
    if not notify_url:
        return
    try:
        client = _redis_client(notify_url)
        client.publish(f"gkd:events:{job_id}", "1")
    except Exception as exc:  # noqa: BLE001 - a lost wake-up only delays a stream by one poll
        log.debug("event notification failed: %s", exc)


_REDIS_CLIENTS: dict[str, Any] = {}


def _redis_client(url: str) -> Any:
    client = _REDIS_CLIENTS.get(url)
    if client is None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        _REDIS_CLIENTS[url] = client
    return client
