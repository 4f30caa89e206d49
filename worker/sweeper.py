"""Periodic re-enqueueing of jobs nobody took (broker was down) and of jobs whose worker died.

Runs as a daemon thread inside each worker process; see `app.store.queue.sweep` for why several are fine.
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

from celery import Celery

from app.store.db import sessionmaker_for
from app.store.queue import sweep
from app.store.settings import Settings

log = logging.getLogger(__name__)


class Sweeper(threading.Thread):
    _running: ClassVar[Sweeper | None] = None

    def __init__(self, celery: Celery, settings: Settings) -> None:
        super().__init__(name="gkd-sweeper", daemon=True)
        self.celery, self.settings = celery, settings
        self.stopped = threading.Event()

    @classmethod
    def start_once(cls, celery: Celery, settings: Settings) -> None:
        if cls._running is None:
            cls._running = cls(celery, settings)
            cls._running.start()

    @classmethod
    def stop_running(cls) -> None:
        if cls._running is not None:
            cls._running.stopped.set()
            cls._running = None

    def sweep_once(self) -> dict[str, int]:
        with sessionmaker_for(self.settings.database_url)() as session:
            counts = sweep(self.celery, self.settings, session)
        if any(counts.values()):
            log.info("sweeper re-enqueued %s", counts)
        return counts

    def run(self) -> None:
        while True:
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("sweeper round failed: %s", exc)
            if self.stopped.wait(self.settings.sweeper_interval_seconds):
                return
