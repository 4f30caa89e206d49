"""The end of a `finetune` job (docs/design.md, "Making a teacher"): its best-on-dev checkpoint becomes a model of
the tenant, stored like an upload, with a `gkd_card.json` that says how it was made.

The files are written under a fresh model id before the job is marked succeeded; the row is inserted in the very
transaction that marks it (`JobContext.finish`'s `on_success`), so a cancel, a lost claim or a full quota leaves
no model row, and the files are then removed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.store import finetuned
from app.store.ids import new_id
from app.store.orm import Dataset, Job, TeacherModel
from app.store.storage import get_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedTeacher:
    """A fine-tuned model written to storage whose row is not inserted yet."""

    model_id: str
    relative: str
    register: Callable[[Session], Any]


def made_card(job: Job, base: TeacherModel | None, datasets: dict[str, Dataset | None]) -> dict[str, Any]:
    """How the model was made, in the tenant's terms (ids, not the worker's paths)."""
    hp = job.hyperparameters or {}
    return {
        "made_by": "gkd finetune job",
        "job": job.id,
        "base_model": {"id": job.teacher_id, "name": base.name if base is not None else None},
        "data": {split: {"dataset": row.id, "name": row.name, "sha256": row.sha256, "rows": row.rows}
                 for split, row in datasets.items() if row is not None},
        **{name: hp.get(name) for name in ("epochs", "learning_rate", "max_length", "batch_size", "seed")},
    }


def stage_teacher(ctx: Any, result: Any) -> StagedTeacher:
    """Write the job's best checkpoint as a new model directory (and to the bucket when GKD_STORAGE=s3)."""
    from gkd.models.teacher import describe_teacher
    from gkd.training.finetune import install_teacher, result_card

    if result.best_dir is None:
        raise RuntimeError("the fine-tuning produced no best checkpoint (no dev rows to select one?)")

    def facts(session: Session) -> tuple[str, dict[str, Any]]:
        job = session.get(Job, ctx.job_id)
        assert job is not None
        datasets = {"train": session.get(Dataset, job.training_dataset_id),
                    "dev": session.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id else None}
        return job.tenant_id, made_card(job, session.get(TeacherModel, job.teacher_id), datasets)

    tenant_id, made = ctx.read(facts)
    model_id = new_id("mdl")
    relative = finetuned.model_path(tenant_id, model_id)
    ctx.check_fence()  # a fresh id: nobody else's files, but a worker that lost the claim writes nothing more
    directory = ctx.settings.storage / relative
    try:
        install_teacher(Path(result.best_dir), directory, {**made, **result_card(result)})
        get_storage(ctx.settings).publish(relative)
        info = describe_teacher(directory)
        size = finetuned.tree_bytes(directory)
    except BaseException:
        discard_teacher(ctx.settings, relative)
        raise
    return StagedTeacher(model_id, relative, lambda session: finetuned.register(
        session, ctx.settings, ctx.job_id, model_id, info, size))


def discard_teacher(settings: Any, relative: str) -> None:
    """Remove a staged model's files (locally and in a bucket) whose row was never inserted."""
    try:
        get_storage(settings).delete(relative)
    except Exception:  # noqa: BLE001 - an orphan directory holds no row; logged for the operator
        log.warning("could not remove the unregistered model files %s", relative, exc_info=True)
