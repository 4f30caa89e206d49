"""Per-token input-gradient saliency of a checkpoint next to its teacher's, for a few examples.

`GET  /v1/jobs/{id}/checkpoints/{cid}/saliency?limit=5` explains the first dev examples of the job (its
validation dataset, or the dev split the trainer held out of the training data);
`POST /v1/jobs/{id}/checkpoints/{cid}/saliency` with `{"texts": [...]}` explains texts of your own.

Saliency is the library's: the gradient of each model's confidence w.r.t. its embedding output
(`gkd.method.objective`), reduced per token and L2-normalised over the sequence (`gkd.method.losses.token_saliency`).
torch and transformers are imported inside the handlers only, so the API starts fast.
"""

from __future__ import annotations

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
from app.errors import ApiError, conflict, not_found
from app.orm import Checkpoint, Dataset, Job, TeacherModel
from app.routes.common import get_job
from app.settings import Settings
from app.storage import ArchiveError, extract_archive, get_storage

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
    from gkd.data.readers import read_examples
    from gkd.data.splits import split_train_dev

    source_id = job.validation_dataset_id or job.training_dataset_id
    dataset = session.get(Dataset, source_id)
    path = _local(settings, dataset.path) if dataset is not None and dataset.deleted_at is None else None
    if path is None or not path.is_file():
        raise conflict(
            f"the dataset {source_id} of job {job.id} was deleted; POST your own texts instead",
            code="dataset_missing",
        )
    examples = [e for e in read_examples(path).examples if e.text.strip()]
    if job.validation_dataset_id:
        return examples[:limit], "validation_dataset"
    spec = DataSpec(train=str(path))
    _train, dev = split_train_dev(examples, spec.dev_fraction, spec.split_seed)
    return dev[:limit], "dev_split"


def _load_pair(teacher_dir: Path, student_dir: Path) -> tuple[Any, Any, Any]:
    """(teacher model, student model, tokenizer), kept for the next request on the same checkpoint."""
    key = (str(teacher_dir), str(student_dir))
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key]
    from transformers import AutoModelForSequenceClassification

    from gkd.models.teacher import load_teacher, load_tokenizer

    teacher = load_teacher(teacher_dir)
    student = AutoModelForSequenceClassification.from_pretrained(
        str(student_dir), attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )
    student.eval()
    loaded = (teacher.model, student, load_tokenizer(student_dir))
    _loaded[key] = loaded
    while len(_loaded) > _LOADED_MAX:
        _loaded.popitem(last=False)
    return loaded


def _compute(teacher_dir: Path, student_dir: Path, texts: list[str], pairs: list[str | None] | None,
             gold: list[str | None], max_length: int) -> list[SaliencyExample]:
    import torch

    from gkd.data.batching import collate, encode
    from gkd.method.losses import token_saliency
    from gkd.method.objective import student_saliency_gradients, teacher_targets

    with _lock:  # one computation at a time: bounded memory and CPU in the API process
        teacher, student, tokenizer = _load_pair(teacher_dir, student_dir)
        labels = [student.config.id2label[i] for i in range(student.config.num_labels)]
        index = {name: i for i, name in enumerate(labels)}
        dataset = encode(tokenizer, texts, pairs, [index.get(str(g), 0) for g in gold], max_length)
        batch = collate(dataset, list(range(len(texts))), int(tokenizer.pad_token_id or 0))
        targets = teacher_targets(teacher, batch)
        logits, grads = student_saliency_gradients(student, batch)
        assert targets.saliency is not None
        teacher_sal = targets.saliency.float()
        student_sal = token_saliency(grads, batch.attention_mask).float()
        teacher_probs = torch.softmax(targets.logits.float(), dim=-1)
        student_probs = torch.softmax(logits.float(), dim=-1)
    out = []
    for row in range(len(texts)):
        n = len(dataset.input_ids[row])
        t, s = teacher_sal[row, :n], student_sal[row, :n]
        cos = float((t * s).sum() / (t.norm() * s.norm()).clamp_min(1e-12))
        tp, sp = teacher_probs[row], student_probs[row]
        out.append(SaliencyExample(
            text=texts[row],
            text_pair=pairs[row] if pairs else None,
            label=gold[row],
            tokens=tokenizer.convert_ids_to_tokens(dataset.input_ids[row]),
            teacher=[round(float(v), 5) for v in t],
            student=[round(float(v), 5) for v in s],
            teacher_prediction=Prediction(label=str(teacher.config.id2label[int(tp.argmax())]),
                                          confidence=round(float(tp.max()), 5)),
            student_prediction=Prediction(label=labels[int(sp.argmax())], confidence=round(float(sp.max()), 5)),
            agreement=round(cos, 5),
        ))
    return out


def _max_length(job: Job, requested: int | None) -> int:
    return int(requested or (job.hyperparameters or {}).get("max_length") or 128)


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
    examples, source = _dev_examples(session, settings, job, limit)
    length = _max_length(job, max_length)
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
    length = _max_length(job, body.max_length)
    session.close()
    student_dir = _student_dir(settings, checkpoint)
    data = _compute(teacher_dir, student_dir, body.texts, body.text_pairs, [None] * len(body.texts), length)
    return SaliencyOut(job=job.id, checkpoint=checkpoint.id, kind=checkpoint.kind, source="request",
                       max_length=length, data=data)
