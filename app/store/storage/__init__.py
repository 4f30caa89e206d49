"""Storage backends for datasets, models and checkpoints: the local directory (`local`), an S3-compatible bucket
(`s3`), and the archives packed and unpacked on the way (`archive`). `get_storage` picks the backend."""

from __future__ import annotations

from pathlib import Path

from app.store.storage.local import Storage


def get_storage(settings: object) -> Storage:
    """The backend chosen by `GKD_STORAGE` (`local` or `s3`)."""
    backend = getattr(settings, "storage_backend", "local")
    root: Path = settings.storage  # type: ignore[attr-defined]
    if backend == "s3":
        from app.store.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    return Storage(root)
