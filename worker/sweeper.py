"""Periodic re-enqueueing of jobs nobody took (broker was down) and of jobs whose worker died.

Runs as a daemon thread inside each worker process; see `app.store.queue.sweep` for why several are fine.
"""

from __future__ import annotations

import logging

from app.store.db import sessionmaker_for
from app.store.queue import sweep
from worker.periodic import PeriodicThread

log = logging.getLogger(__name__)


class Sweeper(PeriodicThread):
    thread_name = "gkd-sweeper"

    def interval_seconds(self) -> float:
        return self.settings.sweeper_interval_seconds

    def round(self) -> object:
        return self.sweep_once()

    def sweep_once(self) -> dict[str, int]:
        with sessionmaker_for(self.settings.database_url)() as session:
            counts = sweep(self.celery, self.settings, session)
        if any(counts.values()):
            log.info("sweeper re-enqueued %s", counts)
        return counts
