"""The webhook outbox: deliveries written in the transaction of their event, and each attempt's bookkeeping.

A job's status event and its webhook deliveries are written in one transaction (`record_event`, called by
`app.store.events.status_event` and by the worker when it records a checkpoint), so an event that happened always
has its deliveries and one that was rolled back has none, whichever process (API or worker) made it. A webhook worker
(worker/webhooks.py) sends the due ones (`claim_due`), each as a Celery task that makes one attempt and records it
(`record_attempt`): success ends the delivery; a failure schedules the next attempt with exponential backoff
(`backoff_seconds`) until `webhook_max_attempts`. The schedule lives in the database, not in broker messages, so a
worker killed at any point loses nothing: the delivery becomes due again and another worker sends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.ids import new_id
from app.store.orm import Job, Webhook, WebhookDelivery, utcnow
from app.store.settings import Settings

EventType = Literal["job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled", "job.paused",
                    "checkpoint.created"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
MAX_ERROR_CHARS = 500


def record_event(session: Session, job_id: str, event_type: str, data: dict[str, Any]) -> list[str]:
    """Queue `event_type` for every endpoint of the job's tenant that subscribed to it, inside the caller's
    transaction; returns the delivery ids. The payload follows the Standard Webhooks shape (type, timestamp, data)."""
    if event_type not in EVENT_TYPES:
        return []
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return []
    endpoints = session.execute(
        select(Webhook.id, Webhook.event_types).where(Webhook.tenant_id == tenant_id)
    ).all()
    now = utcnow()
    ids: list[str] = []
    for webhook_id, types in endpoints:
        if event_type not in (types or []):
            continue
        delivery_id = new_id("msg")
        payload = {"type": event_type, "timestamp": now.isoformat(), "data": data}
        session.add(WebhookDelivery(id=delivery_id, webhook_id=webhook_id, tenant_id=tenant_id,
                                    event_type=event_type, payload=payload, status=PENDING, attempts=0,
                                    next_attempt_at=now, created_at=now))
        ids.append(delivery_id)
    if ids:
        session.flush()
    return ids


def backoff_seconds(settings: Settings, attempts_made: int) -> float:
    """Wait after the `attempts_made`-th failed attempt: backoff, 2x, 4x... capped at the maximum."""
    return float(min(settings.webhook_backoff_seconds * 2 ** max(0, attempts_made - 1),
                     settings.webhook_backoff_max_seconds))


def lease_seconds(settings: Settings) -> float:
    """How long a sent delivery is left to its task before it is due again (its worker may have died)."""
    return settings.webhook_timeout_seconds * 2 + 5


def claim_due(session: Session, settings: Settings, limit: int) -> list[tuple[str, datetime]]:
    """Up to `limit` pending deliveries whose time has come, each leased: its `next_attempt_at` pushed
    `lease_seconds` ahead by a conditional UPDATE, so that several dispatchers never both send it. Returns (id,
    lease) pairs; the task carries the lease and attempts only while it still holds (`start_attempt`). Commits."""
    now = utcnow()
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ).all()
    session.rollback()
    lease = now + timedelta(seconds=lease_seconds(settings))
    claimed: list[tuple[str, datetime]] = []
    for delivery_id, seen in due:
        if _move_lease(session, delivery_id, seen, lease):
            claimed.append((delivery_id, lease))
    return claimed


def start_attempt(session: Session, settings: Settings, delivery_id: str, lease: datetime | None) -> bool:
    """Take the delivery for one attempt: only while the lease the task was sent with still holds (a message that
    waited past its lease was sent again; the newer one attempts), renewing it for the attempt. Commits."""
    if lease is None:  # sent by hand: attempt a pending delivery
        lease = session.scalar(select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.id == delivery_id))
        session.rollback()
        if lease is None:
            return False
    return _move_lease(session, delivery_id, lease, utcnow() + timedelta(seconds=lease_seconds(settings)))


def _move_lease(session: Session, delivery_id: str, seen: datetime, lease: datetime) -> bool:
    moved = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
               WebhookDelivery.next_attempt_at == seen)
        .values(next_attempt_at=lease)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(moved)


def release(session: Session, delivery_id: str) -> None:
    """Make a claimed delivery due now again (its task could not be sent). Commits."""
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                  WebhookDelivery.status == PENDING)
                    .values(next_attempt_at=utcnow()).execution_options(synchronize_session=False))
    session.commit()


def record_attempt(session: Session, settings: Settings, delivery_id: str, *, status_code: int | None,
                   latency_ms: int | None, error: str | None, at: datetime | None = None) -> str | None:
    """Record one attempt (2xx: delivered) and schedule the next after a failure; returns the delivery's status, or
    None when it is no longer pending (another attempt finished it, or its endpoint was deleted)."""
    now = at or utcnow()
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None or row.status != PENDING:
        session.rollback()
        return None
    attempts = row.attempts + 1
    ok = status_code is not None and 200 <= status_code < 300 and error is None
    status = SUCCEEDED if ok else FAILED if attempts >= settings.webhook_max_attempts else PENDING
    row.attempts, row.status, row.last_attempt_at = attempts, status, now
    row.response_status, row.latency_ms = status_code, latency_ms
    row.error = error[:MAX_ERROR_CHARS] if error else None
    if status == PENDING:
        row.next_attempt_at = now + timedelta(seconds=backoff_seconds(settings, attempts))
    session.commit()
    return status
