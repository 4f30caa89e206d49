"""Start-up sweep of the storage volume's temporary directory (issue 20, finding 9).

A killed API process leaves its `.part` uploads and half-extracted models in <storage>/tmp for good. Several
API processes share that directory, so an entry is removed only when nothing has touched it for
`tmp_stale_seconds`: a live upload writes on every chunk and a live extraction adds files as it goes, so the
newest modification time anywhere in an entry says whether someone is still at work on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
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


def sweep_stale(tmp_dir: Path, older_than: float, now: float | None = None) -> list[str]:
    """Remove the entries of `tmp_dir` untouched for `older_than` seconds; the names removed."""
    now = time.time() if now is None else now
    removed: list[str] = []
    if not tmp_dir.is_dir():
        return removed
    for entry in sorted(tmp_dir.iterdir()):
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
        log.info("removed %d stale temporary entries from %s", len(removed), tmp_dir)
    return removed
