"""Archives: pack a model directory for upload; unpack a downloaded checkpoint safely."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from gkd.client.errors import UnsafeArchiveError


def pack_directory(directory: Path) -> Path:
    """A temporary .tar.gz of `directory`'s contents at the archive root. Symbolic links to files are
    followed (so a Hugging Face cache snapshot works); the caller deletes the file."""
    directory = Path(directory)
    fd, name = tempfile.mkstemp(prefix="gkd-upload-", suffix=".tar.gz")
    os.close(fd)
    try:
        with tarfile.open(name, "w:gz", dereference=True) as archive:
            for path in sorted(directory.rglob("*")):
                relative = path.relative_to(directory).as_posix()
                if path.is_file():
                    archive.add(path, arcname=relative, recursive=False)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _member_target(dest: Path, member: tarfile.TarInfo) -> Path | None:
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or ".." in pure.parts:
        raise UnsafeArchiveError(f"archive member {name!r} leaves the target directory")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        return None
    target = dest.joinpath(*parts).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} leaves the target directory")
    return target


def safe_extract(archive_path: Path, dest: Path, *, max_members: int = 10_000) -> Path:
    """Unpack a tar(.gz) into `dest`, refusing links, devices and paths leaving `dest`.

    Every member is checked before anything is written, so a refused archive leaves `dest` untouched.
    Regular files are written by this function (mode 0644), never by tarfile's own extraction.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    with tarfile.open(archive_path, "r:*") as archive:
        members = archive.getmembers()
        if len(members) > max_members:
            raise UnsafeArchiveError(f"archive has {len(members)} members, more than {max_members}")
        plan: list[tuple[tarfile.TarInfo, Path]] = []
        for member in members:
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(f"archive member {member.name!r} is a link; links are refused")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"archive member {member.name!r} is not a regular file or directory")
            target = _member_target(dest, member)
            if target is not None:
                plan.append((member, target))
        for member, target in plan:
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:  # pragma: no cover - regular files always have content
                continue
            with source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
            os.chmod(target, 0o644)
    return dest
