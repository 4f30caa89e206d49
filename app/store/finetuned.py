"""The teacher a `finetune` job made becomes a model of its tenant (docs/design.md, "Making a teacher"): a row in
`models`, stored like an upload under `models/<tenant>/<id>`, counted against the tenant's model and byte quotas,
and named by the job's `fine_tuned_model`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.store import quotas
from app.store.model_rows import model_row
from app.store.orm import Job, TeacherModel
from app.store.settings import Settings

SOURCE = "finetune"
"""The `source` of a model a finetune job made (an upload's is `upload`); its files go with it when it is deleted
(app.store.removal.STORED_SOURCES)."""

MAX_NAME = 300


def model_name(job: Job, base: TeacherModel | None) -> str:
    """The job's own name, else `<base model's name>-finetuned-<job id>`."""
    name = job.name or f"{base.name if base is not None else 'model'}-finetuned-{job.id}"
    return name[:MAX_NAME]


def model_path(tenant_id: str, model_id: str) -> str:
    """Where the model lies, relative to the storage root: beside the tenant's uploads."""
    return f"models/{tenant_id}/{model_id}"


def tree_bytes(directory: Path) -> int:
    """What a model directory occupies: the sum of its files' sizes."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file() and not path.is_symlink())


def register(session: Session, settings: Settings, job_id: str, model_id: str, info: object,
             size_bytes: int) -> TeacherModel:
    """Insert the job's fine-tuned model and name it on the job, in the caller's transaction (the one that marks
    the job succeeded). `quotas.QuotaExceeded` when the tenant cannot hold one more model of this size."""
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    quotas.check(session, settings, job.tenant_id, stored_bytes=size_bytes, models=1)
    base = session.get(TeacherModel, job.teacher_id)
    row = model_row(model_id, job.tenant_id, model_name(job, base), model_path(job.tenant_id, model_id), SOURCE,
                    info)
    row.size_bytes = size_bytes
    session.add(row)
    job.fine_tuned_model_id = row.id
    session.flush()
    return row
