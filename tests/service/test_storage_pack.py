"""app.store.storage.archive.pack_directory: the sha256 and size it reports are those of the archive it wrote."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from app.store.storage.archive import _HashingWriter, pack_directory


def test_reported_sha256_and_size_match_the_archive_across_many_blocks(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    weights = os.urandom(5 * _HashingWriter.BLOCK + 12345)  # several hashing blocks and a partial one
    (source / "model.safetensors").write_bytes(weights)
    (source / "config.json").write_text("{}")
    target = tmp_path / "out" / "final.tar.gz"
    sha, size = pack_directory(source, target)
    data = target.read_bytes()
    assert size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    with tarfile.open(target) as archive:
        assert sorted(archive.getnames()) == ["config.json", "model.safetensors"]
        member = archive.extractfile("model.safetensors")
        assert member is not None and member.read() == weights


def test_hashing_thread_stops_when_writing_fails() -> None:
    class Full(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise OSError(28, "No space left on device")

    before = threading.active_count()
    writer = _HashingWriter(Full())
    with pytest.raises(OSError), writer:
        writer.write(b"x" * (_HashingWriter.BLOCK + 1))
    assert threading.active_count() == before
