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


def queue_for(settings: Settings, device: str | None) -> str:
    """The queue of a job by its device kind: `gpu` -> GKD_GPU_TASK_QUEUE, `cpu` -> GKD_TASK_QUEUE, `auto` ->
    the kind GKD_AUTO_DEVICE names (cpu unless the deployment has GPU workers and says so)."""
    kind = settings.auto_device if device in (None, "", "auto") else device
    return settings.gpu_task_queue if kind == "gpu" else settings.task_queue


def worker_kinds(settings: Settings) -> list[str]:
    """Device kinds this worker consumes: GKD_WORKER_QUEUES (`cpu`, `gpu` or `cpu,gpu`), else from
    GKD_WORKER_DEVICE (`cuda...` -> gpu, `cpu` -> cpu, `auto` -> cpu, and gpu too when CUDA is available, so
    the one local worker of `gkd serve` takes every job)."""
    kinds = [kind.strip() for kind in settings.worker_queues.split(",") if kind.strip()]
    for kind in kinds:
        if kind not in ("cpu", "gpu"):
            raise ValueError(f"GKD_WORKER_QUEUES: unknown device kind {kind!r} (use cpu, gpu or cpu,gpu)")
    if kinds:
        return kinds
    if settings.worker_device.startswith("cuda"):
        return ["gpu"]
    if settings.worker_device == "auto":
        import torch

        return ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]
    return ["cpu"]


def worker_queues(settings: Settings) -> list[str]:
    return [queue_for(settings, kind) for kind in worker_kinds(settings)]


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


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    _tune_embedded_transport(settings)
    celery = Celery("gkd", broker=settings.broker_url, include=["worker.tasks"] if include_tasks else [])
    transport_options: dict[str, object] = {}
    if settings.broker_url.startswith(("redis://", "rediss://", "sqs://")):
        transport_options["visibility_timeout"] = settings.visibility_timeout_seconds
    celery.conf.update(
        task_default_queue=settings.task_queue,
        task_queues=[Queue(settings.task_queue), Queue(settings.gpu_task_queue)],
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
