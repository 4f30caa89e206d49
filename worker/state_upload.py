"""Upload the training state to a bucket off the training thread (GKD_STORAGE=s3).

A training state holds the model and both Adam moments: several hundred MB for a BERT-base-sized student.
Uploading it inside the trainer's checkpoint callback stopped training for as long as the upload took, at
every state save (each epoch, or every `GKD_STATE_EVERY_STEPS`). Only the newest state matters to the
worker that resumes a job, so a state still waiting when a newer one arrives is dropped, never uploaded.

Order: the trainer records an evaluation's `best` checkpoint (packed, uploaded and committed on the training
thread) before it saves the state of that evaluation, and the state is queued here only after that, so the
state in the bucket never runs ahead of the recorded checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("gkd.worker")


class StateUploader:
    """Publishes the newest submitted file in a background thread; `flush` waits for it, `close` ends it.

    Each upload reads a hard link taken when the file was submitted: the trainer writes its next state to a
    new file and renames it over the old path, so the bytes being uploaded never change under the upload.
    A failed upload is logged and reported by `flush`; the next submitted state is tried as usual.
    """

    def __init__(self, publish_file: Callable[[Path, str], None], name: str = "gkd-state-upload") -> None:
        self._publish_file = publish_file
        self._changed = threading.Condition()
        self._waiting: tuple[Path, str] | None = None
        self._busy = False
        self._closed = False
        self._newest_uploaded = True  # nothing submitted yet: nothing is missing from the bucket
        self._serial = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, source: Path, relative: str) -> None:
        """Queue `source` to be stored as `relative`, replacing a submitted file that has not started."""
        snapshot = self._snapshot(Path(source))
        with self._changed:
            if self._closed:
                snapshot.unlink(missing_ok=True)
                raise RuntimeError("the state uploader is closed")
            dropped, self._waiting = self._waiting, (snapshot, relative)
            self._newest_uploaded = False
            self._changed.notify_all()
        if dropped is not None:
            dropped[0].unlink(missing_ok=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is waiting or uploading; True when the newest submitted file is in the bucket."""
        with self._changed:
            self._changed.wait_for(lambda: self._waiting is None and not self._busy, timeout)
            return self._newest_uploaded and self._waiting is None and not self._busy

    def close(self, *, upload_waiting: bool = False) -> None:
        """Stop the thread after the upload in progress (and the waiting one, with `upload_waiting`). Idempotent."""
        with self._changed:
            dropped = None
            if not upload_waiting:
                dropped, self._waiting = self._waiting, None
            self._closed = True
            self._changed.notify_all()
        if dropped is not None:
            dropped[0].unlink(missing_ok=True)
        self._thread.join()

    def _snapshot(self, source: Path) -> Path:
        self._serial += 1
        snapshot = source.with_name(f".{source.name}.upload-{self._serial}")
        snapshot.unlink(missing_ok=True)
        try:
            os.link(source, snapshot)
        except OSError:  # a file system without hard links: a copy is slower but just as safe
            shutil.copyfile(source, snapshot)
        return snapshot

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting is not None or self._closed)
                if self._waiting is None:
                    return
                (snapshot, relative), self._waiting = self._waiting, None
                self._busy = True
            uploaded = False
            try:
                self._publish_file(snapshot, relative)
                uploaded = True
            except Exception:  # noqa: BLE001 - the next state is tried again; flush() reports the gap
                log.warning("upload of the training state %s failed", relative, exc_info=True)
            finally:
                snapshot.unlink(missing_ok=True)
                with self._changed:
                    self._busy = False
                    if self._waiting is None:  # nothing newer arrived meanwhile
                        self._newest_uploaded = uploaded
                    self.failures += 0 if uploaded else 1
                    self._changed.notify_all()
