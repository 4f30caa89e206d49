"""The local directory backend (GKD_STORAGE=local, the default): safe paths under the storage root, hashing.

Stored objects are named by the relative paths kept in the database (`datasets/ds_x.csv`,
`jobs/job_x/checkpoints/best.tar.gz`, a teacher directory...). The local directory `settings.storage` is the store
itself or, for an S3-compatible bucket (`app.store.storage.s3`), the staging area and download cache of each
process: files are written there first, then `publish`ed. Nothing from a request becomes a path: files are named
by generated ids.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def resolve(storage: Path, relative: str) -> Path:
    """A stored relative path under `storage`; refuses anything that would leave it."""
    path = Path(relative)
    if path.is_absolute():
        return path
    full = (storage / path).resolve()
    if not full.is_relative_to(storage.resolve()):
        raise ValueError(f"path {relative!r} leaves the storage directory")
    return full


class Storage:
    """The local directory backend; `app.store.storage.s3.S3Storage` overrides the same operations."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def local_path(self, relative: str) -> Path:
        """Where `relative` lives (or will be fetched to) on this machine."""
        return resolve(self.root, relative)

    def publish(self, relative: str) -> None:
        """Make the file or directory at `local_path(relative)` durable in the backend (local: it already is)."""

    def publish_file(self, source: Path, relative: str) -> None:
        """Store the bytes of the file `source` as `relative` (a snapshot of `local_path(relative)` taken
        elsewhere, see worker.publisher). Local: copied into place under a temporary name, then renamed."""
        target = self.local_path(relative)
        if Path(source).resolve() == target.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.publishing")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    def materialize(self, relative: str, *, refresh: bool = False) -> Path:
        """A local path holding `relative` (downloaded first for remote backends, or when `refresh`)."""
        return self.local_path(relative)

    def exists(self, relative: str) -> bool:
        return self.local_path(relative).exists()

    def delete(self, relative: str) -> None:
        path = self.local_path(relative)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def download_url(self, relative: str, filename: str) -> str | None:
        """A time-limited URL a client can download from directly, when the backend has such URLs."""
        return None

    def stream(self, relative: str, chunk: int = 1 << 20) -> tuple[Iterator[bytes], int]:
        """(an iterator of the stored bytes, their size)."""
        path = self.local_path(relative)
        size = path.stat().st_size

        def read() -> Iterator[bytes]:
            with path.open("rb") as handle:
                yield from iter(lambda: handle.read(chunk), b"")

        return read(), size
