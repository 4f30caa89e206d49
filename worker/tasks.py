"""Celery tasks. Heavy imports (torch, transformers) happen inside the task, never at API start-up."""

from __future__ import annotations

import functools
import logging

from celery.signals import worker_ready, worker_shutdown

from app.settings import Settings
from worker.celery_app import RUN_JOB, celery

log = logging.getLogger(__name__)


@functools.cache
def worker_settings() -> Settings:
    settings: Settings = celery.conf.gkd_settings
    settings.ensure_dirs()
    return settings


@celery.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from worker.runner import run_job as run

    status = run(worker_settings(), job_id)
    log.info("job %s: %s", job_id, status)
    return status


@worker_ready.connect
def _start_sweeper(sender: object = None, **_kwargs: object) -> None:
    from worker.sweeper import Sweeper

    Sweeper.start_once(celery, worker_settings())


@worker_shutdown.connect
def _stop_sweeper(sender: object = None, **_kwargs: object) -> None:
    from worker.sweeper import Sweeper

    Sweeper.stop_running()
