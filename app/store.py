"""Database operations shared by the API, the worker and the CLI: keys, events, job transitions.

Event numbering: `append_event` bumps `jobs.last_seq` with an UPDATE first, which takes the job's row
lock (PostgreSQL) or the database write lock (SQLite) until the transaction ends, so concurrent writers
queue up, and a rolled back transaction gives its number back: seq is 1, 2, 3... per job, no gaps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.ids import new_id
from app.orm import ApiKey, Job, JobEvent, Tenant, utcnow
from app.settings import TERMINAL_STATUSES

log = logging.getLogger(__name__)

KEY_PREFIX = "gkd_"


# ---------------------------------------------------------------------------------------------- keys


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """A new key for `tenant_name` (created if needed); the plain key is returned once, stored hashed."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(plain), prefix=plain[:12])
    session.add(key)
    session.flush()
    return plain, key


def tenant_for_key(session: Session, plain: str) -> Tenant | None:
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    digest = hash_key(plain)
    # One round trip: the active key's hash and its tenant (this runs on every authenticated request).
    row = session.execute(
        select(ApiKey.key_hash, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        return None
    return row[1]


def revoke_key(session: Session, key_or_prefix: str) -> list[ApiKey]:
    """Revoke by full key or by its displayed prefix (which must match exactly one active key)."""
    if key_or_prefix.startswith(KEY_PREFIX) and len(key_or_prefix) > 20:
        keys = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_prefix))))
    else:
        keys = list(
            session.scalars(
                select(ApiKey).where(ApiKey.prefix.startswith(key_or_prefix), ApiKey.revoked_at.is_(None))
            )
        )
        if len(keys) > 1:
            raise ValueError(f"prefix {key_or_prefix!r} matches {len(keys)} keys; give more characters")
    for key in keys:
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    session.flush()
    return keys


# -------------------------------------------------------------------------------------------- events


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
    return append_event(session, job_id, "status", message or f"job {status}", {"status": status})


def event_dict(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "event",
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "type": event.type,
        "message": event.message,
        "data": event.data,
    }


def is_terminal_event(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


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


# ------------------------------------------------------------------------------------- transitions


def transition(
    session: Session,
    job_id: str,
    new_status: str,
    *,
    from_statuses: tuple[str, ...],
    message: str = "",
    values: dict[str, Any] | None = None,
) -> bool:
    """Atomically move a job from one of `from_statuses` to `new_status` and record the status event.

    A conditional UPDATE, so two processes racing on the same job cannot both win.
    """
    changes: dict[str, Any] = {"status": new_status, **(values or {})}
    if new_status in TERMINAL_STATUSES:
        changes.setdefault("finished_at", utcnow())
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_statuses))
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    status_event(session, job_id, new_status, message)
    return True


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
