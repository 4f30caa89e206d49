"""A few worker threads that run blocking calls for the event loop with the least work per hop.

Every job read crosses to a thread and back once, so the crossing is part of its cost. Measured per hop (CPU of
both sides, 4 concurrent callers, uvloop; docs/performance.md): anyio's `to_thread.run_sync` 85 to 100 µs,
`loop.run_in_executor` on a `ThreadPoolExecutor` 30 to 45 µs, this 12 µs. It is a queue the threads take calls
from, and an asyncio future each call settles with one `call_soon_threadsafe`; nothing else (no capacity limiter,
no cancel scope, no `concurrent.futures.Future` chained to the asyncio one).

A call whose awaiting task is cancelled still runs to its end in its thread, and its result is dropped. The threads
start on first use and stop when their `ReadThreads` is collected (or at interpreter exit: they are daemons and
hold no state between calls). Not tied to the app's lifespan, so an app served again still works.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_Call = tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Callable[[], Any]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: hand the outcome to the awaiting task, unless it stopped waiting."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _serve(calls: queue.SimpleQueue[_Call | None]) -> None:
    """A thread's loop; holds no reference to its `ReadThreads`, so that one can be collected."""
    while (call := calls.get()) is not None:
        future, loop, function = call
        try:
            outcome: tuple[Any, BaseException | None] = (function(), None)
        except BaseException as exc:  # noqa: BLE001 - every outcome goes to the awaiting task
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(_settle, future, *outcome)
        except RuntimeError:  # the loop closed meanwhile (the app stopped): nobody waits for this result
            log.debug("a read finished after its event loop closed")
        del call, future, loop, function, outcome  # nothing of a finished call stays alive while the thread waits


def _stop(calls: queue.SimpleQueue[_Call | None], threads: int) -> None:
    for _ in range(threads):
        calls.put(None)


class ReadThreads:
    """`await threads(function)` runs `function()` in one of `count` threads and returns what it returns (or
    raises what it raised)."""

    def __init__(self, count: int, name: str = "gkd-read") -> None:
        self.count, self.name = count, name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._started = False

    def _start(self) -> None:
        # Called on the event loop only (from `__call__`), so two callers cannot both start the threads.
        for index in range(self.count):
            threading.Thread(target=_serve, args=(self._calls,), name=f"{self.name}-{index}", daemon=True).start()
        weakref.finalize(self, _stop, self._calls, self.count)
        self._started = True

    def __call__(self, function: Callable[[], T]) -> asyncio.Future[T]:
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((future, loop, function))
        return future
