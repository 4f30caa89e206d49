"""The job queue: the task's name, the queues, the Celery app every process builds from its settings, and sending
a job to a worker, always after the job's transaction has committed.

The API enqueues by task *name* (`RUN_JOB`) and never imports the worker; the worker registers the task under
that name (`worker.tasks`). A failed send leaves the job `queued` with `enqueued_at` unset; the sweeper
(`sweep`, run by every worker) re-enqueues it later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from celery import Celery
from kombu import Queue
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.store.jobs import ACTIVE_STATUSES, QUEUED
from app.store.orm import Job, utcnow
from app.store.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB = "worker.tasks.run_job"  # run (or resume) the job whose id it carries
DELIVER_WEBHOOK = "worker.tasks.deliver_webhook"  # one attempt of one webhook delivery (a webhook worker's queue)
QUEUE_KINDS = ("cpu", "gpu")  # what a job's `device` asks for; `auto` is the deployment's GKD_AUTO_DEVICE


def queue_for(settings: Settings, kind: str | None) -> str:
    """The queue of a job by its kind: `gpu` -> GKD_GPU_TASK_QUEUE, `cpu` -> GKD_TASK_QUEUE, `auto` -> the kind
    GKD_AUTO_DEVICE names (cpu unless the deployment has GPU workers and says so)."""
    kind = settings.auto_device if kind in (None, "", "auto") else kind
    return settings.gpu_task_queue if kind == "gpu" else settings.task_queue


def _tune_embedded_transport(settings: Settings) -> None:
    """The SQLAlchemy transport polls; its interval is a class attribute (transport options for it crash)."""
    if settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        from kombu.transport import sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = settings.broker_polling_seconds


def make_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """A Celery app on `settings`' broker: the API's producer (no tasks) or, with `include`, the worker's app."""
    _tune_embedded_transport(settings)
    celery = Celery("gkd", broker=settings.broker_url, include=list(include))
    transport_options: dict[str, object] = {}
    if settings.broker_url.startswith(("redis://", "rediss://", "sqs://")):
        transport_options["visibility_timeout"] = settings.visibility_timeout_seconds
    celery.conf.update(
        task_default_queue=settings.task_queue,
        task_queues=[Queue(settings.task_queue), Queue(settings.gpu_task_queue), Queue(settings.webhook_queue)],
        task_routes={RUN_JOB: {"queue": settings.task_queue}, DELIVER_WEBHOOK: {"queue": settings.webhook_queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        worker_hijack_root_logger=False,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.enqueue_timeout_seconds,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    celery.conf.gkd_settings = settings
    return celery


def send_run_job(celery: Celery, settings: Settings, job_id: str, kind: str | None = "auto") -> bool:
    try:
        celery.send_task(
            RUN_JOB,
            args=[job_id],
            queue=queue_for(settings, kind),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0},
        )
    except Exception as exc:  # noqa: BLE001 - the broker being down must not fail the request
        log.warning("could not enqueue job %s (the sweeper will retry): %s", job_id, exc)
        return False
    return True


def send_delivery(celery: Celery, settings: Settings, delivery_id: str, lease: datetime) -> bool:
    """Send one attempt of a webhook delivery, leased until `lease`, to the webhook queue; False when the broker
    refused it."""
    try:
        celery.send_task(DELIVER_WEBHOOK, args=[delivery_id, lease.isoformat()], queue=settings.webhook_queue,
                         retry=True,
                         retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                       "interval_max": 1.0})
    except Exception as exc:  # noqa: BLE001 - the delivery stays due; the next round sends it
        log.warning("could not send webhook delivery %s: %s", delivery_id, exc)
        return False
    return True


def send_job(celery: Celery, settings: Settings, session: Session, job_id: str) -> bool:
    """`send_run_job` to the queue the job's row asks for."""
    return send_run_job(celery, settings, job_id, session.scalar(select(Job.queue_kind).where(Job.id == job_id)))


def enqueue_committed_job(celery: Celery, settings: Settings, session: Session, job_id: str) -> bool:
    """Enqueue a job whose row is committed, and record when."""
    if not send_job(celery, settings, session, job_id):
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
        select(Job.id, Job.queue_kind).where(
            Job.status == QUEUED,
            Job.created_at < queued_cutoff,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff),
        )
    ).all()
    stale = session.execute(
        select(Job.id, Job.queue_kind).where(
            Job.status.in_(ACTIVE_STATUSES),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_cutoff),
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_cutoff),
        )
    ).all()
    session.rollback()
    for bucket, ids, cutoff in (("queued", queued, queued_cutoff), ("stale", stale, stale_cutoff)):
        for job_id, kind in ids:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if not claimed:
                continue
            if send_run_job(celery, settings, job_id, kind):
                counts[bucket] += 1
            else:  # give the claim back, so the next sweep tries again instead of waiting out the cutoff
                session.execute(
                    update(Job).where(Job.id == job_id, Job.enqueued_at == now).values(enqueued_at=None)
                    .execution_options(synchronize_session=False)
                )
                session.commit()
    return counts
