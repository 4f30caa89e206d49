"""The worker's Celery application, configured from `app.store.settings.Settings` (environment, prefix GKD_).

`celery -A worker.celery_app worker` and `gkd worker` use the module-level `celery`, built by the store's queue
module (`app.store.queue.make_celery`, which the API also uses to send tasks by name) with this package's tasks.
"""

from __future__ import annotations

from app.store.queue import make_celery, queue_for
from app.store.settings import Settings


def worker_kinds(settings: Settings) -> list[str]:
    """Queue kinds this worker consumes: GKD_WORKER_QUEUES (`cpu`, `gpu`, `cpu,gpu`, or `webhooks` for a webhook
    worker, which sends deliveries and never trains), else from
    GKD_WORKER_DEVICE (`cuda...` -> gpu, `cpu` -> cpu, `auto` -> cpu, and gpu too when CUDA is available, so
    the one local worker of `gkd serve` takes every job)."""
    kinds = [kind.strip() for kind in settings.worker_queues.split(",") if kind.strip()]
    for kind in kinds:
        if kind not in ("cpu", "gpu", "webhooks"):
            raise ValueError(f"GKD_WORKER_QUEUES: unknown queue kind {kind!r} (use cpu, gpu, cpu,gpu or webhooks)")
    if kinds:
        return kinds
    if settings.worker_device.startswith("cuda"):
        return ["gpu"]
    if settings.worker_device == "auto":
        import torch

        return ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]
    return ["cpu"]


def worker_queues(settings: Settings) -> list[str]:
    return [settings.webhook_queue if kind == "webhooks" else queue_for(settings, kind)
            for kind in worker_kinds(settings)]


def is_webhook_worker(settings: Settings) -> bool:
    """Only webhooks: a pool of threads sends several deliveries at once (a training worker runs one job)."""
    return worker_kinds(settings) == ["webhooks"]


celery = make_celery(Settings(), include=["worker.tasks"])
