"""Celery tasks. Heavy imports (torch, transformers) happen inside the task, never at API start-up."""

from __future__ import annotations

import functools
import logging

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from app.store.queue import DELIVER_WEBHOOK, RUN_JOB
from app.store.settings import Settings
from worker.celery_app import celery, worker_kinds

log = logging.getLogger(__name__)


@functools.cache
def worker_settings() -> Settings:
    settings: Settings = celery.conf.gkd_settings
    settings.ensure_dirs()
    return settings


@celery.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from worker.metrics import WORKER_METRICS
    from worker.runner import run_job as run

    WORKER_METRICS.busy(True)
    try:
        status = run(worker_settings(), job_id)
    finally:
        WORKER_METRICS.busy(False)
    WORKER_METRICS.job(status)
    log.info("job %s: %s", job_id, status)
    return status


@celery.task(name=DELIVER_WEBHOOK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_webhook(delivery_id: str, lease: str | None = None) -> str | None:
    """One attempt of a webhook delivery; the next attempt (after a failure) is scheduled in the database and sent by
    a webhook worker's dispatcher when due, so no retry waits in a broker message that a killed worker would hold."""
    from datetime import datetime

    from worker.webhooks import attempt

    return attempt(worker_settings(), delivery_id, datetime.fromisoformat(lease) if lease else None)


@worker_shutting_down.connect
def _drain(sender: object = None, **_kwargs: object) -> None:
    """SIGTERM (warm shutdown): the running job saves its state and is re-queued; see `worker.runner.DRAIN`."""
    from worker.runner import DRAIN

    DRAIN.set()


@worker_ready.connect
def _start_sweeper(sender: object = None, **_kwargs: object) -> None:
    from worker.sweeper import Sweeper

    Sweeper.start_once(celery, worker_settings())
    if "webhooks" in worker_kinds(worker_settings()):
        from worker.webhooks import Dispatcher

        Dispatcher.start_once(celery, worker_settings())
    if worker_settings().worker_metrics_port:
        from worker.metrics import serve_metrics

        serve_metrics(worker_settings().worker_metrics_port)


@worker_shutdown.connect
def _stop_sweeper(sender: object = None, **_kwargs: object) -> None:
    from worker.sweeper import Sweeper

    Sweeper.stop_running()
    from worker.webhooks import Dispatcher

    Dispatcher.stop_running()
