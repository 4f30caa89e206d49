"""`gkd worker`: one Celery worker, contributed to `gkd` through the `gkd.commands` entry-point group.

Without the entry points (a source checkout), `python -m worker.cli` runs the same command; `gkd serve` starts it
that way, by module name, so the API never imports the worker.
"""

from __future__ import annotations

import click

from app.store.db import upgrade
from app.store.settings import Settings


def worker_argv(settings: Settings, *, name: str = "gkd@%h", loglevel: str = "INFO") -> list[str]:
    from worker.celery_app import is_webhook_worker, worker_queues

    pool = (["--pool=threads", f"--concurrency={settings.webhook_concurrency}"] if is_webhook_worker(settings)
            else ["--pool=solo", "--concurrency=1"])
    return [
        "worker",
        *pool,
        f"--queues={','.join(worker_queues(settings))}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname={name}",
        f"--loglevel={loglevel}",
    ]


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", default="gkd@%h", show_default=True, help="Celery node name.")
def worker(loglevel: str, name: str) -> None:
    """Run one Celery worker against GKD_DATABASE_URL / GKD_BROKER_URL: a training worker (solo pool, one job at a
    time) or, with GKD_WORKER_QUEUES=webhooks, a webhook worker (threads) that sends the webhook deliveries."""
    from worker.celery_app import celery

    settings: Settings = celery.conf.gkd_settings
    settings.ensure_dirs()
    upgrade(settings.database_url)
    celery.worker_main(worker_argv(settings, name=name, loglevel=loglevel))


if __name__ == "__main__":
    worker()
