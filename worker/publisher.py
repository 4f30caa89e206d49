"""Uploads to a bucket off the training thread, in order (GKD_STORAGE=s3).

A packed checkpoint is tens to hundreds of MB and a training state (the model and both Adam moments) about
three times that. Uploading them inside the trainer's callbacks stopped training for as long as each upload
took: at every improved evaluation and every state save. Here one thread per job uploads them in the order
they were submitted while training goes on.

- A checkpoint's row and event are written by the task that uploaded it, after the upload: a client never
  sees a checkpoint that is not in the bucket. Checkpoint tasks are never dropped.
- Only the newest training state matters to the worker that resumes a job: a state still waiting when a
  newer one arrives is dropped, and the newer one goes to the back of the queue. So the state in the bucket
  never runs ahead of the checkpoints recorded before it was saved.
- Each upload reads a hard link taken when it was submitted. The trainer writes the next state or archive
  under a new name and renames it over the old one, so the bytes going up never change under the upload
  (boto3's multipart upload opens the file by name for each part).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gkd.worker")


@dataclass
class _Task:
    kind: str  # "state" or "checkpoint"
    snapshot: Path | None  # the file to upload (None: nothing to upload, only `then`)
    relative: str
    then: Callable[[], None] | None = None  # runs after a successful upload (records the checkpoint)

    def discard(self) -> None:
        if self.snapshot is not None:
            self.snapshot.unlink(missing_ok=True)


class BackgroundPublisher:
    """One job's uploads, in submission order, in a background thread.

    A failed checkpoint task is kept and raised by `flush`, and the checkpoint tasks after it are skipped:
    the job must fail rather than finish without its checkpoints. A failed state upload is only logged; the
    next state is tried as usual and `flush` reports whether the newest one made it.
    """

    def __init__(self, publish_file: Callable[[Path, str], None], name: str = "gkd-publish") -> None:
        self._publish_file = publish_file
        self._changed = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._newest_state_uploaded = True  # nothing submitted yet: nothing is missing from the bucket
        self._serial = 0
        self.state_failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ submit
    def submit_state(self, source: Path, relative: str) -> None:
        """Upload `source` as `relative` after what is queued, dropping an older state that has not started."""
        task = _Task("state", self._snapshot(Path(source)), relative)
        with self._changed:
            dropped = self._take_waiting_states()
            self._newest_state_uploaded = False
            self._append(task)
        for old in dropped:
            old.discard()

    def submit_checkpoint(self, source: Path | None, relative: str, then: Callable[[], None]) -> None:
        """Upload `source` as `relative` (None: already uploaded by an earlier task), then run `then`."""
        task = _Task("checkpoint", self._snapshot(Path(source)) if source is not None else None, relative, then)
        with self._changed:
            self._append(task)

    def _take_waiting_states(self) -> list[_Task]:
        """Remove the states that have not started from the queue (call with the lock held); the caller
        discards their snapshots outside the lock."""
        waiting = [t for t in self._queue if t.kind == "state"]
        for task in waiting:
            self._queue.remove(task)
        return waiting

    def _append(self, task: _Task) -> None:
        if self._closed:
            task.discard()
            raise RuntimeError("the publisher is closed")
        self._queue.append(task)
        self._changed.notify_all()

    def _snapshot(self, source: Path) -> Path:
        self._serial += 1
        snapshot = source.with_name(f".{source.name}.upload-{self._serial}")
        snapshot.unlink(missing_ok=True)
        try:
            os.link(source, snapshot)
        except OSError:  # a file system without hard links: a copy is slower but just as safe
            shutil.copyfile(source, snapshot)
        return snapshot

    # ------------------------------------------------------------------------------------------- wait
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted task has run. Raises a failed checkpoint task's error (once); returns
        whether the newest submitted state is in the bucket."""
        with self._changed:
            done = self._changed.wait_for(lambda: not self._queue and not self._busy, timeout)
            error, self._error = self._error, None
            if error is not None:
                raise error
            return done and self._newest_state_uploaded

    def close(self) -> None:
        """Drop waiting states, finish the checkpoint tasks, stop the thread. Never raises; idempotent."""
        with self._changed:
            dropped = self._take_waiting_states()
            self._closed = True
            self._changed.notify_all()
        for old in dropped:
            old.discard()
        self._thread.join()
        if self._error is not None:
            log.warning("a checkpoint upload failed before the publisher closed: %s", self._error)

    # ------------------------------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return
                task = self._queue.popleft()
                skip = task.kind == "checkpoint" and self._error is not None
                self._busy = True
            ok = False
            try:
                if not skip:
                    self._execute(task)
                    ok = True
            except Exception as exc:  # noqa: BLE001 - handed to flush() or logged
                if task.kind == "checkpoint":
                    with self._changed:
                        self._error = self._error or exc
                else:
                    log.warning("upload of the training state %s failed", task.relative, exc_info=True)
            finally:
                task.discard()
                with self._changed:
                    self._busy = False
                    if task.kind == "state":
                        self.state_failures += 0 if ok else 1
                        if not any(t.kind == "state" for t in self._queue):  # nothing newer arrived meanwhile
                            self._newest_state_uploaded = ok
                    self._changed.notify_all()

    def _execute(self, task: _Task) -> None:
        if task.snapshot is not None:
            self._publish_file(task.snapshot, task.relative)
        if task.then is not None:
            task.then()
