"""A worker process's background rounds (the sweeper, the webhook dispatcher): a daemon thread per kind and
process that runs one round every few seconds until the worker shuts down, and outlives a failed round."""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

from celery import Celery

from app.store.settings import Settings

log = logging.getLogger(__name__)


class PeriodicThread(threading.Thread):
    """Subclasses name their thread, say how long to wait between rounds, and do one round."""

    thread_name: ClassVar[str]
    _running: ClassVar[PeriodicThread | None] = None  # set on each subclass: one of each kind per process

    def __init__(self, celery: Celery, settings: Settings) -> None:
        super().__init__(name=self.thread_name, daemon=True)
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

    def interval_seconds(self) -> float:
        raise NotImplementedError

    def round(self) -> object:
        raise NotImplementedError

    def run(self) -> None:
        while True:
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("%s round failed: %s", self.thread_name, exc)
            if self.stopped.wait(self.interval_seconds()):
                return
