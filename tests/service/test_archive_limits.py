"""Issue 20, finding 3: an uploaded archive is checked member by member while it is read, and refused at the first
excess (count, declared size against the byte limit or a ratio to the archive's size) - not after a pass over
the whole stream. Each test asserts how far the reading got."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.settings import Settings
from app.store.storage.archive import ArchiveError, expansion_limit, extract_archive, extract_tar_stream
from tests.service.test_api_basics import assert_error
from tests.service.test_models import models_dir, upload

GiB = 1 << 30
ZEROS = b"\0" * (1 << 20)


class CountingReader:
    """The archive as a stream that remembers how many compressed bytes were taken from it."""

    def __init__(self, data: bytes) -> None:
        self.raw = io.BytesIO(data)
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.consumed += len(chunk)
        return chunk


def gzip_tar(members: list[tuple[str, int]], *, data_mib: int | None = None) -> bytes:
    """A .tar.gz whose members (name, declared size) are followed by zeros, built without compressing them:
    one deflated MiB of zeros (after a full flush, so it stands alone) is repeated. `data_mib` cuts the data of
    a single member short (its header may declare far more than the archive holds). The gzip trailer is not
    valid; every test here stops reading long before it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    blocks = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate blocks, spliced into the gzip stream

    def standalone(data: bytes) -> bytes:
        return blocks.compress(data) + blocks.flush(zlib.Z_FULL_FLUSH)

    mib = standalone(ZEROS)
    small: dict[int, bytes] = {}
    parts = [compressor.flush(zlib.Z_FULL_FLUSH)]
    for name, size in members:
        info = tarfile.TarInfo(name)
        info.size = size
        parts.append(compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + compressor.flush(zlib.Z_FULL_FLUSH))
        if data_mib is not None:
            parts.extend([mib] * data_mib)
        elif size % (1 << 20) == 0:
            parts.extend([mib] * (size >> 20))
        else:
            assert size < 1 << 20 and size % 512 == 0
            if size not in small:
                small[size] = standalone(ZEROS[:size])
            parts.append(small[size])
    parts.append(compressor.flush())
    return b"".join(parts)


def test_a_small_archive_declaring_10_gib_is_refused_at_its_first_header(tmp_path: Path) -> None:
    archive = gzip_tar([("model.safetensors", 10 * GiB)], data_mib=10 * 1024)  # about 10 MB holding 10 GiB
    assert 5_000_000 < len(archive) < 20_000_000
    stream = CountingReader(archive)
    limit = expansion_limit(len(archive), max_bytes=8 * GiB, max_ratio=200)
    with pytest.raises(ArchiveError, match="200 times its compressed size"):
        extract_tar_stream(stream, tmp_path, max_members=10_000, limit=limit)
    assert stream.consumed <= 64 * 1024  # the first header's block, not the 10 MB behind it
    assert list(tmp_path.iterdir()) == []


def test_the_byte_limit_alone_refuses_at_the_first_header_too(tmp_path: Path) -> None:
    archive = gzip_tar([("model.safetensors", 10 * GiB)], data_mib=64)
    stream = CountingReader(archive)
    with pytest.raises(ArchiveError, match=f"more than {8 * GiB} bytes"):
        extract_tar_stream(stream, tmp_path, max_members=10_000,
                           limit=expansion_limit(len(archive), max_bytes=8 * GiB, max_ratio=None))
    assert stream.consumed <= 64 * 1024


def test_many_members_stop_at_the_first_one_past_the_limit(tmp_path: Path) -> None:
    members = [(f"shard-{i:05d}.safetensors", 64 * 1024) for i in range(20_000)]  # 1.25 GiB declared
    archive = gzip_tar(members)
    stream = CountingReader(archive)
    with pytest.raises(ArchiveError, match="more than 1048576 bytes"):
        extract_tar_stream(stream, tmp_path, max_members=100_000,
                           limit=expansion_limit(len(archive), max_bytes=1 << 20, max_ratio=None))
    assert stream.consumed < len(archive) // 20  # 17 of 20,000 members read
    assert len(list(tmp_path.iterdir())) == 16  # the 16 that fitted; the caller removes the directory


def test_the_member_count_stops_the_reading_at_the_first_excess(tmp_path: Path) -> None:
    archive = gzip_tar([(f"f{i:05d}.json", 512) for i in range(20_000)])
    stream = CountingReader(archive)
    with pytest.raises(ArchiveError, match="more than 100 members"):
        extract_tar_stream(stream, tmp_path, max_members=100,
                           limit=expansion_limit(len(archive), max_bytes=GiB, max_ratio=None))
    assert stream.consumed < len(archive) // 20
    assert len(list(tmp_path.iterdir())) == 100


def test_a_link_after_good_members_is_refused_where_it_stands(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo("weights.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(buffer.getvalue())
    target = tmp_path / "x"
    target.mkdir()
    with pytest.raises(ArchiveError, match="is a link"):
        extract_archive(path, target, max_members=10, max_bytes=GiB, max_ratio=200)
    assert not (target / "weights.safetensors").exists()


def test_a_zip_past_the_ratio_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.safetensors", b"\0" * (50 << 20))  # 50 MiB in about 50 KB
    target = tmp_path / "x"
    target.mkdir()
    with pytest.raises(ArchiveError, match="200 times its compressed size"):
        extract_archive(path, target, max_members=10, max_bytes=GiB, max_ratio=200)
    assert list(target.iterdir()) == []


def test_an_uploaded_bomb_is_a_422_and_stores_nothing(client: TestClient, auth: dict, settings: Settings) -> None:
    archive = gzip_tar([("model.safetensors", 10 * GiB)], data_mib=2 * 1024)  # about 2 MB declaring 10 GiB
    error = assert_error(upload(client, auth, "bomb.tar.gz", archive), 422, "invalid_request_error", "file")
    assert error["code"] == "invalid_model" and "times its compressed size" in error["message"]
    assert models_dir(settings) == []
