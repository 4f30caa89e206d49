"""Sending `worker.tasks.run_job` to the broker, always after the job's transaction has committed.

A failed send leaves the job `queued` with `enqueued_at` unset; the sweeper re-enqueues it later.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.orm import Job, utcnow
from app.settings import Settings

log = logging.getLogger(__name__)


def send_run_job(celery: Celery, settings: Settings, job_id: str, device: str | None = "auto") -> bool:
    from worker.celery_app import RUN_JOB, queue_for

    try:
        celery.send_task(
            RUN_JOB,
            args=[job_id],
            queue=queue_for(settings, device),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0},
        )
    except Exception as exc:  # noqa: BLE001 - the broker being down must not fail the request
        log.warning("could not enqueue job %s (the sweeper will retry): %s", job_id, exc)
        return False
    return True


def enqueue_committed_job(celery: Celery, settings: Settings, session: Session, job_id: str) -> bool:
    """Enqueue a job whose row is committed, and record when."""
    device = session.scalar(select(Job.device).where(Job.id == job_id))
    if not send_run_job(celery, settings, job_id, device):
        return False
    try:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
        session.commit()
    except Exception as exc:  # noqa: BLE001 - only bookkeeping; the task is on its way
        session.rollback()
        log.warning("could not record enqueue time of %s: %s", job_id, exc)
    return True


def sweep(celery: Celery, settings: Settings, session: Session) -> dict[str, int]:
    """Re-enqueue queued jobs nobody took, and running jobs whose worker stopped sending heartbeats.

    Each candidate is first claimed for re-enqueueing with a conditional UPDATE on `enqueued_at`, so
    several sweepers (one per worker) do not send duplicates; duplicates would be harmless anyway because
    `run_job` claims jobs atomically.
    """
    now = utcnow()
    queued_cutoff = now - timedelta(seconds=settings.requeue_after_seconds)
    stale_cutoff = now - timedelta(seconds=settings.stale_after_seconds)
    counts = {"queued": 0, "stale": 0}
    queued = session.execute(
        select(Job.id, Job.device).where(
            Job.status == "queued",
            Job.created_at < queued_cutoff,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff),
        )
    ).all()
    stale = session.execute(
        select(Job.id, Job.device).where(
            Job.status.in_(("running", "cancelling")),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_cutoff),
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_cutoff),
        )
    ).all()
    session.rollback()
    for kind, ids, cutoff in (("queued", queued, queued_cutoff), ("stale", stale, stale_cutoff)):
        for job_id, device in ids:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if not claimed:
                continue
            if send_run_job(celery, settings, job_id, device):
                counts[kind] += 1
            else:  # give the claim back, so the next sweep tries again instead of waiting out the cutoff
                session.execute(
                    update(Job).where(Job.id == job_id, Job.enqueued_at == now).values(enqueued_at=None)
                    .execution_options(synchronize_session=False)
                )
                session.commit()
    return counts
