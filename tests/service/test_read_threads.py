"""app.read_threads: the hop the polled reads take to their threads and back."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from app.read_threads import ReadThreads


def _names(prefix: str) -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(prefix)}


def test_calls_run_in_at_most_count_threads_and_return_or_raise() -> None:
    threads = ReadThreads(2, name="rt-basic")
    loop_thread: list[int] = []
    seen: list[str] = []
    busy = [0, 0]  # now, most at once
    lock = threading.Lock()

    def work(value: int) -> int:
        with lock:
            busy[0] += 1
            busy[1] = max(busy)
        seen.append(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            busy[0] -= 1
        return value * 2

    def fail() -> None:
        raise KeyError("missing")

    async def main() -> list[int]:
        loop_thread.append(threading.get_ident())
        results = await asyncio.gather(*(threads(lambda v=v: work(v)) for v in range(8)))
        with pytest.raises(KeyError, match="missing"):
            await threads(fail)
        assert await threads(threading.get_ident) != loop_thread[0]
        return list(results)

    assert asyncio.run(main()) == [v * 2 for v in range(8)]
    assert busy[1] == 2 and set(seen) == {"rt-basic-0", "rt-basic-1"}


def test_a_cancelled_wait_or_a_closed_loop_leaves_the_threads_working() -> None:
    threads = ReadThreads(1, name="rt-cancel")
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        finished.set()
        return "late"

    async def cancel_while_running() -> None:
        task = asyncio.ensure_future(threads(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_while_running())  # the loop closes while `slow` still runs in its thread
    assert finished.wait(5)
    time.sleep(0.05)  # the thread has tried to answer the closed loop

    async def again() -> str:
        return await threads(lambda: "still here")

    assert asyncio.run(again()) == "still here"


def test_threads_start_on_first_use_and_stop_when_collected() -> None:
    threads = ReadThreads(2, name="rt-life")
    assert not _names("rt-life")

    async def use(runner: ReadThreads) -> None:
        await runner(lambda: None)

    asyncio.run(use(threads))
    assert _names("rt-life") == {"rt-life-0", "rt-life-1"}
    del threads
    gc.collect()
    deadline = time.monotonic() + 5
    while _names("rt-life") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _names("rt-life")
