"""The Celery application, configured from `app.settings.Settings` (environment, prefix GKD_).

`celery -A worker.celery_app worker` and `gkd worker` use the module-level `celery`; the API builds its own
producer app from its settings with `make_celery(settings)` (it only sends tasks by name, never imports
torch).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.settings import Settings

RUN_JOB = "worker.tasks.run_job"


def _tune_embedded_transport(settings: Settings) -> None:
    """The SQLAlchemy transport polls; its interval is a class attribute (transport options for it crash)."""
    if settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        from kombu.transport import sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = settings.broker_polling_seconds


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    _tune_embedded_transport(settings)
    celery = Celery("gkd", broker=settings.broker_url, include=["worker.tasks"] if include_tasks else [])
    transport_options: dict[str, object] = {}
    if settings.broker_url.startswith(("redis://", "rediss://", "sqs://")):
        transport_options["visibility_timeout"] = settings.visibility_timeout_seconds
    celery.conf.update(
        task_default_queue=settings.task_queue,
        task_queues=[Queue(settings.task_queue)],
        task_routes={RUN_JOB: {"queue": settings.task_queue}},
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


celery = make_celery(Settings(), include_tasks=True)
