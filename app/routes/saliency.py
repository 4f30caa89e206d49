"""Per-token input-gradient saliency of a checkpoint next to its teacher's, for a few examples.

`GET  /v1/jobs/{id}/checkpoints/{cid}/saliency?limit=5` explains the first dev examples of the job (its
validation dataset, or the dev split the trainer held out of the training data: `gkd.data.splits.dev_split`);
`POST /v1/jobs/{id}/checkpoints/{cid}/saliency` with `{"texts": [...]}` explains texts of your own.

The computation is the library's (`gkd.evaluation.saliency`); this route finds the job's files, keeps the last
loaded models, and runs one computation at a time. torch and transformers are imported inside the handlers only,
so the API starts fast.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import CurrentTenant, SessionDep, SettingsDep
from app.errors import ApiError, conflict, invalid, not_found
from app.routes.common import get_job
from app.store.orm import Checkpoint, Dataset, Job, TeacherModel
from app.store.settings import Settings
from app.store.storage import get_storage
from app.store.storage.archive import ArchiveError, extract_archive

router = APIRouter(prefix="/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/saliency", tags=["checkpoints"])

MAX_EXAMPLES = 20
MAX_TEXT_CHARS = 20_000
_LOADED_MAX = 2  # (teacher, student) pairs kept in memory
_loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
_lock = threading.Lock()


class SaliencyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] = Field(
        ..., min_length=1, max_length=MAX_EXAMPLES, description="Texts to explain (at most 20)."
    )
    text_pairs: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None] | None = Field(
        None, description="Optional second segments, one per text (sentence-pair tasks)."
    )
    max_length: int | None = Field(
        None, ge=8, le=4096, description="Tokens per example; default the job's hyperparameters.max_length."
    )

    @model_validator(mode="after")
    def _pairs_match(self) -> SaliencyRequest:
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError("text_pairs must have one entry per text")
        return self


class Prediction(BaseModel):
    label: str
    confidence: float


class SaliencyExample(BaseModel):
    text: str
    text_pair: str | None = None
    label: str | None = Field(None, description="The gold label, for dataset examples.")
    tokens: list[str]
    teacher: list[float] = Field(..., description="Teacher saliency per token (L2-normalised over the sequence).")
    student: list[float] = Field(..., description="Student saliency per token (L2-normalised over the sequence).")
    teacher_prediction: Prediction
    student_prediction: Prediction
    agreement: float = Field(..., description="Cosine between the teacher's and the student's saliency vectors.")


class SaliencyOut(BaseModel):
    object: str = "saliency"
    job: str
    checkpoint: str
    kind: str
    source: str = Field(..., description="'validation_dataset', 'dev_split' or 'request'.")
    max_length: int
    data: list[SaliencyExample]


def _checkpoint_for(session: Session, tenant: Any, job_id: str, checkpoint_id: str) -> tuple[Job, Checkpoint]:
    job = get_job(session, tenant, job_id)
    row = session.get(Checkpoint, checkpoint_id)
    if row is None or row.job_id != job.id:
        has_any = session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id).limit(1))
        if has_any is None:
            raise conflict(f"job {job.id} has no checkpoint yet (status {job.status!r})", code="no_checkpoint")
        raise not_found("checkpoint", checkpoint_id)
    return job, row


def _local(settings: Settings, relative: str, *, refresh: bool = False) -> Path | None:
    """A local path holding the stored object (downloaded first from a bucket), or None when it is gone."""
    try:
        return get_storage(settings).materialize(relative, refresh=refresh)
    except Exception:  # noqa: BLE001 - a missing object (local or remote) reads as gone
        return None


def _teacher_dir(session: Session, settings: Settings, job: Job) -> Path:
    teacher = session.get(TeacherModel, job.teacher_id)
    path = _local(settings, teacher.path) if teacher is not None else None
    if path is None or not (path / "config.json").is_file():
        raise conflict(f"the teacher of job {job.id} is no longer available", code="teacher_missing")
    return path


def _student_dir(settings: Settings, checkpoint: Checkpoint) -> Path:
    """The checkpoint archive extracted once per content (sha256) under the storage volume."""
    base = settings.storage / "jobs" / checkpoint.job_id / "extracted"
    target = base / f"{checkpoint.id}-{checkpoint.sha256[:16]}"
    if (target / "config.json").is_file():
        return target
    # `best` is rewritten in place when it improves: fetch the current archive, not a cached copy.
    archive = _local(settings, checkpoint.path, refresh=True)
    if archive is None or not archive.is_file():
        raise not_found("checkpoint file", checkpoint.id)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    try:
        root = extract_archive(archive, tmp, max_members=settings.max_archive_members,
                               max_bytes=settings.max_extracted_bytes)
        if root != tmp:
            raise ArchiveError("unexpected checkpoint layout")
        try:
            tmp.rename(target)
        except OSError:  # another request won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        # Copies of earlier contents of the same checkpoint (a `best` that improved) are stale now.
        for old in base.glob(f"{checkpoint.id}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    except ArchiveError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ApiError(500, f"checkpoint {checkpoint.id} cannot be unpacked: {exc.message}",
                       code="checkpoint_unreadable") from exc
    return target


def _dev_examples(session: Session, settings: Settings, job: Job, limit: int) -> tuple[list[Any], str]:
    from gkd.config import DataSpec
    from gkd.data.splits import dev_split

    source_id = job.validation_dataset_id or job.training_dataset_id
    dataset = session.get(Dataset, source_id)
    path = _local(settings, dataset.path) if dataset is not None and dataset.deleted_at is None else None
    if path is None or not path.is_file():
        raise conflict(
            f"the dataset {source_id} of job {job.id} was deleted; POST your own texts instead",
            code="dataset_missing",
        )
    # The trainer's own dev split of this job (with a validation dataset, only that file is read).
    spec = DataSpec(train=str(path), dev=str(path) if job.validation_dataset_id else None)
    examples = [e for e in dev_split(spec) if e.text.strip()]
    return examples[:limit], "validation_dataset" if job.validation_dataset_id else "dev_split"


def _compute(teacher_dir: Path, student_dir: Path, texts: list[str], pairs: list[str | None] | None,
             gold: list[str | None], max_length: int) -> list[SaliencyExample]:
    from gkd.evaluation.saliency import SaliencyModels, explain

    key = (str(teacher_dir), str(student_dir))
    with _lock:  # one computation at a time: bounded memory and CPU in the API process
        models = _loaded.get(key)
        if models is None:
            models = _loaded[key] = SaliencyModels.load(teacher_dir, student_dir)
            while len(_loaded) > _LOADED_MAX:
                _loaded.popitem(last=False)
        _loaded.move_to_end(key)
        explained = explain(models, texts, pairs, gold, max_length)
    return [SaliencyExample.model_validate(dataclasses.asdict(item)) for item in explained]


def _position_limit(session: Session, job: Job) -> int | None:
    """The longest input both models read: the teacher's position limit and, for a student started from another
    encoder, that encoder's (the registry's usable lengths); None when neither is known."""
    ids = [job.teacher_id]
    init = (job.student or {}).get("init")
    if isinstance(init, dict) and isinstance(init.get("model"), str):
        ids.append(init["model"])
    limits = [row.max_position_embeddings for row in (session.get(TeacherModel, i) for i in ids)
              if row is not None and row.max_position_embeddings]
    return min(limits) if limits else None


def _max_length(session: Session, job: Job, requested: int | None) -> int:
    """The tokens per example: the request's, else the job's. Longer than the models' position table is a 422
    (it answered 500 before: issue 20 finding 7)."""
    limit = _position_limit(session, job)
    if requested is not None and limit is not None and requested > limit:
        raise invalid(f"max_length {requested} is longer than the models of job {job.id} can read ({limit} tokens)",
                      param="max_length")
    length = int(requested or (job.hyperparameters or {}).get("max_length") or 128)
    return min(length, limit) if limit is not None else length


@router.get("", response_model=SaliencyOut)
def dev_saliency(
    job_id: str,
    checkpoint_id: str,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_EXAMPLES)] = 5,
    max_length: Annotated[int | None, Query(ge=8, le=4096)] = None,
) -> SaliencyOut:
    """Teacher and student saliency for the first `limit` dev examples of the job."""
    job, checkpoint = _checkpoint_for(session, tenant, job_id, checkpoint_id)
    teacher_dir = _teacher_dir(session, settings, job)
    length = _max_length(session, job, max_length)
    examples, source = _dev_examples(session, settings, job, limit)
    session.close()
    if not examples:
        return SaliencyOut(job=job.id, checkpoint=checkpoint.id, kind=checkpoint.kind, source=source,
                           max_length=length, data=[])
    student_dir = _student_dir(settings, checkpoint)
    pairs = [e.text_pair for e in examples] if any(e.text_pair for e in examples) else None
    data = _compute(teacher_dir, student_dir, [e.text for e in examples], pairs,
                    [None if e.label is None else str(e.label) for e in examples], length)
    return SaliencyOut(job=job.id, checkpoint=checkpoint.id, kind=checkpoint.kind, source=source,
                       max_length=length, data=data)


@router.post("", response_model=SaliencyOut)
def text_saliency(
    job_id: str,
    checkpoint_id: str,
    body: SaliencyRequest,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
) -> SaliencyOut:
    """Teacher and student saliency for your own texts."""
    job, checkpoint = _checkpoint_for(session, tenant, job_id, checkpoint_id)
    teacher_dir = _teacher_dir(session, settings, job)
    length = _max_length(session, job, body.max_length)
    session.close()
    student_dir = _student_dir(settings, checkpoint)
    data = _compute(teacher_dir, student_dir, body.texts, body.text_pairs, [None] * len(body.texts), length)
    return SaliencyOut(job=job.id, checkpoint=checkpoint.id, kind=checkpoint.kind, source="request",
                       max_length=length, data=data)
