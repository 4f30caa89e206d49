"""Registering teacher models: from a local directory (CLI) or from an uploaded archive (API)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.ids import new_id
from app.store.model_rows import model_row
from app.store.orm import TeacherModel
from app.store.public_paths import replace_paths
from app.store.settings import Settings
from app.store.storage import get_storage
from app.store.storage.archive import ArchiveError, extract_archive
from gkd.text import unstorable_reason

FAMILY_COLUMNS = ("family", "num_attention_heads", "max_position_embeddings", "embedding_size")


class RegistryError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def describe(path: Path) -> object:
    """gkd.models.teacher.describe_teacher, with its ModelError turned into RegistryError."""
    from gkd.models.families import ModelError
    from gkd.models.teacher import describe_teacher

    try:
        info = describe_teacher(path)
    except ModelError as exc:
        raise RegistryError(exc.message, exc.param) from exc
    except RecursionError as exc:
        raise RegistryError("a JSON file of the model is nested too deeply", "file") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to read an uploaded model is the upload's fault
        # A bad safetensors header, a config whose fields have the wrong types...: say what failed, not 500.
        message = f"the model could not be read: {type(exc).__name__}: {_printable(str(exc))}"
        raise RegistryError(message, "file") from exc
    check_storable(info)
    return info


def _printable(text: str) -> str:
    """A bounded message that JSON can carry whatever bytes the upload held."""
    return text[:300].encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


_INT_COLUMNS = {  # field -> the largest value its column holds on every backend
    "num_layers": 2**31 - 1, "hidden_size": 2**31 - 1, "vocab_size": 2**31 - 1, "num_attention_heads": 2**31 - 1,
    "max_position_embeddings": 2**31 - 1, "embedding_size": 2**31 - 1, "num_parameters": 2**63 - 1,
}
_TEXT_COLUMNS = {"task": 64, "model_type": 64, "family": 64}
MAX_LABEL_CHARS = 200


def check_storable(info: object) -> None:
    """Refuse what the database cannot hold before a row exists: PostgreSQL answered 500 for a 65-character
    model_type or hidden_size 2**40, and a lone surrogate in id2label broke every later read of the row."""
    for field, most in _INT_COLUMNS.items():
        value = getattr(info, field, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most):
            raise RegistryError(f"config.json: {field} must be an integer from 0 to {most}", field)
    for field, longest in _TEXT_COLUMNS.items():
        value = getattr(info, field, None)
        if value is not None:
            _check_text(value, longest, field)
    for label in getattr(info, "labels", []):
        _check_text(label, MAX_LABEL_CHARS, "id2label")


def _check_text(value: object, longest: int, field: str) -> None:
    if not isinstance(value, str):
        raise RegistryError(f"config.json: {field} must be a string", field)
    reason = unstorable_reason(value) or (f"must be at most {longest} characters" if len(value) > longest else None)
    if reason is not None:
        raise RegistryError(f"config.json: {field} {reason}", field)


def import_directory(
    session: Session, path: Path, name: str, *, tenant_id: str | None = None, source: str = "import"
) -> TeacherModel:
    """Register the directory in place (its absolute path). Re-importing the same name for the same owner
    updates that row instead of adding another, so `gkd serve` can do it at every start (a deleted model's name
    registers a new row)."""
    path = path.expanduser().resolve()
    info = describe(path)
    existing = session.scalar(
        select(TeacherModel).where(
            TeacherModel.name == name,
            TeacherModel.tenant_id.is_(None) if tenant_id is None else TeacherModel.tenant_id == tenant_id,
            TeacherModel.deleted_at.is_(None),
        )
    )
    fresh = model_row(existing.id if existing else new_id("mdl"), tenant_id, name, str(path), source, info)
    if existing is not None:
        for column in ("path", "source", "task", "model_type", "labels", "num_layers", "hidden_size",
                       "num_parameters", "vocab_size", *FAMILY_COLUMNS):
            setattr(existing, column, getattr(fresh, column))
        session.flush()
        return existing
    session.add(fresh)
    session.flush()
    return fresh


def archive_view(relative: str) -> str:
    """A path inside an uploaded archive as its uploader knows it."""
    return f"the archive's {relative}" if relative else "the archive"


def import_archive(settings: Settings, archive: Path, name: str, tenant_id: str) -> tuple[TeacherModel, Path]:
    """Extract and check an uploaded archive, then move it into storage. Returns the unsaved row and the
    final directory (the caller inserts the row and removes the directory if that fails)."""
    model_id = new_id("mdl")
    work = Path(tempfile.mkdtemp(prefix="model-", dir=settings.tmp_dir))
    try:
        target = work / "x"
        target.mkdir()
        root = extract_archive(archive, target, max_members=settings.max_archive_members,
                               max_bytes=settings.max_extracted_bytes, max_ratio=settings.max_archive_ratio)
        try:
            info = describe(root)
        except RegistryError as exc:  # "<tmp>/model-x/x/config.json ..." -> "the archive's config.json ..."
            exc.message = replace_paths(exc.message, target, archive_view)
            raise
        relative = f"models/{tenant_id}/{model_id}"
        final = settings.storage / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root), str(final))
        get_storage(settings).publish(relative)  # GKD_STORAGE=s3: to the bucket
    except ArchiveError as exc:
        raise RegistryError(exc.message, exc.param) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model_row(model_id, tenant_id, name, relative, "upload", info), final
