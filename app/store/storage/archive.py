"""Archives: packing a checkpoint directory into a .tar.gz (hashed while it is written), and unpacking uploaded
model archives safely (no links, devices, absolute paths, `..`, pickle weights or oversized content).

Nothing from a request becomes a path: archive members are checked before a single byte is written.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArchiveError(ValueError):
    def __init__(self, message: str, param: str | None = "file") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _HashingWriter:
    """A write-only file object that hashes what passes through it, so an archive is read only once.

    The sha256 runs in a second thread on 1 MiB blocks (hashlib releases the GIL for them) while this thread
    goes on building the archive: packing a checkpoint takes about half the time (benchmarks/end_to_end.py).
    Use it as a context manager; `digest` is final after the `with` block."""

    BLOCK = 1 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0
        self._pending = bytearray()
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._hasher = threading.Thread(target=self._hash, name="gkd-sha256", daemon=True)

    def _hash(self) -> None:
        while (block := self._blocks.get()) is not None:
            self.digest.update(block)

    def __enter__(self) -> _HashingWriter:
        self._hasher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._emit()
        finally:
            self._blocks.put(None)
            self._hasher.join()

    def _emit(self) -> None:
        if self._pending:
            block = bytes(self._pending)
            self._pending.clear()
            self._blocks.put(block)
            self.raw.write(block)

    def write(self, data: bytes) -> int:
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= self.BLOCK:
            self._emit()
        return len(data)

    def flush(self) -> None:
        """Blocks are written whole; the `with` block's end writes the rest."""


def pack_directory(directory: Path, target: Path, compresslevel: int = 0) -> tuple[str, int]:
    """Write `directory`'s regular files as a .tar.gz at `target` (files at the archive root).

    Written to a temporary name in the same directory, fsynced, then renamed: readers never see half a file.
    The default gzip level 0 stores without compressing: float weights shrink by under 10 % at level 6,
    which costs seconds per checkpoint (benchmarks/results/end_to_end.md); any gzip reader still reads it.
    Returns (sha256, size).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            with hashing, tarfile.open(fileobj=hashing, mode="w:gz", compresslevel=compresslevel) as archive:  # type: ignore[call-overload]
                for path in sorted(directory.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashing.digest.hexdigest(), hashing.size


def _check_member_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise ArchiveError(f"archive member {name!r} has an invalid name")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"archive member {name!r} leaves the target directory")
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        raise ArchiveError(f"archive member {name!r} is a pickle weight file; only safetensors are accepted",
                           param="weights")
    return path


class _CountingReader:
    """A read-only stream over a file that counts the compressed bytes taken from it (how far a refusal got)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.consumed += len(data)
        return data


def extract_archive(archive: Path, target: Path, *, max_members: int, max_bytes: int,
                    max_ratio: float | None = None) -> Path:
    """Extract a .tar.gz/.tgz/.tar or .zip into the empty directory `target`, refusing links, devices,
    absolute paths, `..`, pickle weights and oversized content: more than `max_bytes` unpacked, or (with
    `max_ratio`) more than `max_ratio` times the archive's own size. Returns the model root inside `target`
    (the target itself, or its only top-level directory)."""
    limit = expansion_limit(archive.stat().st_size, max_bytes=max_bytes, max_ratio=max_ratio)
    if tarfile.is_tarfile(archive):
        with archive.open("rb") as raw:
            extract_tar_stream(_CountingReader(raw), target, max_members=max_members, limit=limit)
    elif zipfile.is_zipfile(archive):
        _extract_zip(archive, target, max_members=max_members, limit=limit)
    else:
        raise ArchiveError("the upload is not a .tar.gz or .zip archive", param="file")
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if not (target / "config.json").exists() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


@dataclass(frozen=True)
class ExpansionLimit:
    """The most bytes an archive may unpack to, and why (for the refusal's message)."""

    bytes: int
    reason: str


def expansion_limit(compressed_size: int, *, max_bytes: int, max_ratio: float | None) -> ExpansionLimit:
    """The configured byte limit, or `max_ratio` times the archive's size when that is smaller: a small archive
    that declares gigabytes (a bomb) is refused by its headers, not after unpacking them."""
    by_size = ExpansionLimit(max_bytes, f"more than {max_bytes} bytes")
    if max_ratio is None:
        return by_size
    by_ratio = int(max_ratio * max(compressed_size, 1))
    if by_ratio >= max_bytes:
        return by_size
    return ExpansionLimit(by_ratio, f"more than {max_ratio:g} times its compressed size ({by_ratio} bytes)")


def _check_tar_member(member: tarfile.TarInfo) -> None:
    _check_member_name(member.name)
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive member {member.name!r} is a link; links are refused")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"archive member {member.name!r} is not a regular file or directory")


def extract_tar_stream(stream: BinaryIO | _CountingReader, target: Path, *, max_members: int,
                       limit: ExpansionLimit) -> None:
    """Unpack a (compressed) tar read front to back from `stream` into `target`: each member is checked when its
    header arrives (count, name, type, declared size against what is left of `limit`) and written before the next
    header is read, so an excess stops the reading there instead of after a pass over the whole archive."""
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise ArchiveError(f"the archive has more than {max_members} members")
                _check_tar_member(member)
                total += member.size
                if total > limit.bytes:
                    raise ArchiveError(f"the archive expands to {limit.reason}")
                dest = target.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, dest.open("xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileExistsError):
            raise ArchiveError("the archive lists the same file twice") from exc
        raise ArchiveError(f"the archive cannot be read: {exc}") from exc


def _extract_zip(archive: Path, target: Path, *, max_members: int, limit: ExpansionLimit) -> None:
    """The central directory lists every member up front (no decompression): all are checked before writing,
    and each member's bytes are counted while it is written (a header may lie about its size)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise ArchiveError(f"the archive has more than {max_members} members")
            total = 0
            for info in infos:
                _check_member_name(info.filename.rstrip("/") or info.filename)
                mode = info.external_attr >> 16
                # No file-type bits (zipfile.writestr writes only permissions) is a regular file, as unzip reads it.
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise ArchiveError(f"archive member {info.filename!r} is a link or special file")
                total += info.file_size
                if total > limit.bytes:
                    raise ArchiveError(f"the archive expands to {limit.reason}")
            for info in infos:
                dest = target.joinpath(*PurePosixPath(info.filename.rstrip("/")).parts)
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as source, dest.open("xb") as out:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        written += len(block)
                        if written > info.file_size:  # a lying header: stop a zip bomb early
                            raise ArchiveError(f"archive member {info.filename!r} is larger than declared")
                        out.write(block)
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        if isinstance(exc, FileExistsError):
            raise ArchiveError("the archive lists the same file twice") from exc
        raise ArchiveError(f"the archive cannot be read: {exc}") from exc
