"""S3-compatible object storage (AWS S3, MinIO, Ceph, R2...) behind `app.store.storage.local.Storage` (GKD_STORAGE=s3).

Objects are keyed `<GKD_S3_PREFIX><relative path>`; a directory (a teacher model) is the set of objects under
`<key>/`. Uploads above `GKD_S3_MULTIPART_THRESHOLD_BYTES` are multipart (boto3's transfer manager, parts
of `GKD_S3_MULTIPART_CHUNK_BYTES`); downloads land in a temporary name beside the target and are renamed
into place, so a reader never sees half a file and an interrupted download is simply done again.
Credentials come from the usual AWS sources (environment, profile, instance role); boto3 is an optional
dependency (`pip install 'gkd[s3]'`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.store.storage.local import Storage, resolve


class S3Storage(Storage):
    kind = "s3"

    def __init__(self, root: Path, bucket: str, *, prefix: str = "", client: Any = None,
                 multipart_threshold: int = 64 << 20, multipart_chunk: int = 16 << 20,
                 presign_seconds: int = 3600) -> None:
        super().__init__(root)
        if not bucket:
            raise ValueError("GKD_STORAGE=s3 needs GKD_S3_BUCKET")
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix, self.client = bucket, prefix, client
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk)
        self.presign_seconds = presign_seconds

    @classmethod
    def from_settings(cls, settings: Any) -> S3Storage:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"},
                          s3={"addressing_style": settings.s3_addressing_style}),
        )
        return cls(settings.storage, settings.s3_bucket, prefix=settings.s3_prefix, client=client,
                   multipart_threshold=settings.s3_multipart_threshold_bytes,
                   multipart_chunk=settings.s3_multipart_chunk_bytes,
                   presign_seconds=settings.s3_presign_seconds)

    def key(self, relative: str) -> str:
        if Path(relative).is_absolute():
            raise ValueError(f"{relative!r} is an absolute path on one machine, not a storage object")
        resolve(self.root, relative)  # refuses `..`
        return self.prefix + Path(relative).as_posix()

    # ------------------------------------------------------------------------------------------ writes
    def publish(self, relative: str) -> None:
        path = self.local_path(relative)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                self._upload(file, f"{self.key(relative)}/{file.relative_to(path).as_posix()}")
        else:
            self.publish_file(path, relative)

    def publish_file(self, source: Path, relative: str) -> None:
        self._upload(Path(source), self.key(relative))

    def _upload(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, key, Config=self.transfer)

    def delete(self, relative: str) -> None:
        key = self.key(relative)
        keys = [key, *self._list(key + "/")]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        super().delete(relative)

    # ------------------------------------------------------------------------------------------- reads
    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def exists(self, relative: str) -> bool:
        key = self.key(relative)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.client.exceptions.ClientError:
            return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=key + "/", MaxKeys=1).get("KeyCount"))

    def materialize(self, relative: str, *, refresh: bool = False) -> Path:
        if Path(relative).is_absolute():
            return Path(relative)  # an imported teacher: a directory every worker host mounts
        target = self.local_path(relative)
        if target.exists() and not refresh:
            return target
        key = self.key(relative)
        members = self._list(key + "/")
        if members:
            self._download_dir(key, members, target)
        else:
            self._download_file(key, target)
        return target

    def _download_file(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, key, tmp, Config=self.transfer)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _download_dir(self, key: str, members: list[str], target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for member in members:
                inner = member[len(key) + 1 :]
                if not inner or inner.endswith("/"):
                    continue
                self._download_file(member, resolve(staging, inner))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def stream(self, relative: str, chunk: int = 1 << 20) -> tuple[Any, int]:
        """(an iterator of the object's bytes, its size), read straight from the bucket."""
        response = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
        return response["Body"].iter_chunks(chunk), int(response["ContentLength"])

    def download_url(self, relative: str, filename: str) -> str | None:
        return str(self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(relative),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'},
            ExpiresIn=self.presign_seconds,
        ))
