"""Start-up sweep of what a killed API process left on the storage volume (issue 20, finding 9).

A killed API process leaves its `.part` uploads and half-extracted models in <storage>/tmp, and half-extracted
checkpoints (`jobs/<id>/extracted/.extract-*`, the saliency routes') for good. Several API processes share them,
so an entry is removed only when nothing has touched it for `tmp_stale_seconds`: a live upload writes on every
chunk and a live extraction adds files as it goes, so the newest modification time anywhere in an entry says
whether someone is still at work on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def last_touched(entry: Path) -> float:
    """The newest mtime of `entry` and, for a directory, of everything below it (links are not followed)."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for root, dirs, files in os.walk(entry):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:  # removed while we looked: its owner is at work
                    return time.time()
    return newest


def api_temporaries(storage: Path) -> list[Path]:
    """What the API writes before it is complete: storage/tmp's entries and checkpoint extractions in progress."""
    tmp_dir = storage / "tmp"
    entries = sorted(tmp_dir.iterdir()) if tmp_dir.is_dir() else []
    return entries + sorted(storage.glob("jobs/*/extracted/.extract-*"))


def sweep_stale(entries: Iterable[Path], older_than: float, now: float | None = None) -> list[str]:
    """Remove the `entries` untouched for `older_than` seconds; the names removed."""
    now = time.time() if now is None else now
    removed: list[str] = []
    for entry in entries:
        try:
            if now - last_touched(entry) < older_than:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another API process swept it first
            continue
        except OSError:
            log.warning("could not remove the stale temporary %s", entry.name, exc_info=True)
            continue
        removed.append(entry.name)
    if removed:
        log.info("removed %d stale temporary entries: %s", len(removed), ", ".join(removed[:10]))
    return removed
