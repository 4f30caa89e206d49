"""Removing a dataset or a model that no unfinished job references, and the job create's side of the same race.

`SELECT ... FOR UPDATE` does nothing on SQLite, so a check-then-delete let a job create and a delete of its dataset
both succeed there. Both sides are now guarded on every backend:

- the delete is one conditional UPDATE: `deleted_at` is set only if the row is live and NOT EXISTS an unfinished job
  that references it. SQLite runs one writer at a time, so the statement sees every committed job; on PostgreSQL the
  row is locked by a statement of its own first (an UPDATE that waited for a lock still evaluates its subquery in
  its older snapshot), and the guarded UPDATE then reads the jobs committed meanwhile;
- the create re-reads the rows it references after inserting its job, in the same transaction (`first_removed`):
  a delete that committed in between is seen there and the create rolls back.

Soft deletes keep the row: finished jobs still name their dataset or teacher. The caller removes the files after
the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, exists, or_, select, update
from sqlalchemy.orm import Session

from app.store.jobs import TERMINAL_STATUSES
from app.store.orm import Dataset, Job, TeacherModel, utcnow
from app.store.settings import Settings
from app.store.storage import get_storage

log = logging.getLogger(__name__)

Removable = type[Dataset] | type[TeacherModel]


class InUse(Exception):
    """An unfinished job references the row; nothing was changed."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class AlreadyRemoved(Exception):
    """The row was deleted by a concurrent request (or never existed)."""


def jobs_using(table: Removable, row_id: str) -> ColumnElement[bool]:
    """Jobs that reference the row: a dataset for training or validation, a model as the teacher or as the
    encoder the student starts from (`student.init.model`, stored as the model's id)."""
    if table is Dataset:
        return or_(Job.training_dataset_id == row_id, Job.validation_dataset_id == row_id)
    return or_(Job.teacher_id == row_id, Job.student[("init", "model")].as_string() == row_id)


def active_user(session: Session, table: Removable, row_id: str) -> str | None:
    """An unfinished job that references the row, if any."""
    return session.scalar(
        select(Job.id).where(jobs_using(table, row_id), Job.status.not_in(TERMINAL_STATUSES)).limit(1)
    )


def soft_delete_unless_used(session: Session, table: Removable, row_id: str) -> None:
    """Mark the row deleted in the session's transaction unless an unfinished job uses it (`InUse`) or it is
    already deleted (`AlreadyRemoved`). The caller commits, then removes the files."""
    session.execute(select(table.id).where(table.id == row_id).with_for_update())  # PostgreSQL: wait for creators
    unused = ~exists(select(Job.id).where(jobs_using(table, row_id), Job.status.not_in(TERMINAL_STATUSES)))
    result: Any = session.execute(
        update(table).where(table.id == row_id, table.deleted_at.is_(None), unused).values(deleted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        return
    user = active_user(session, table, row_id)
    session.rollback()
    if user is not None:
        raise InUse(user)
    raise AlreadyRemoved(row_id)


def first_removed(session: Session, references: Iterable[tuple[str, Removable, str]]) -> tuple[str, str] | None:
    """After a job's INSERT, in its transaction: the first (param, id) of `references` (param, table, id) whose
    row is deleted or gone by now, or None when all are still live."""
    for param, table, row_id in references:
        deleted_at = session.execute(select(table.deleted_at).where(table.id == row_id)).first()
        if deleted_at is None or deleted_at[0] is not None:
            return param, row_id
    return None


def delete_model(session: Session, settings: Settings, model: TeacherModel) -> None:
    """Soft-delete the model (`InUse`, `AlreadyRemoved` as `soft_delete_unless_used`), commit, then remove its
    stored files: the row is gone first, so no new job is ever given a teacher whose files were removed."""
    soft_delete_unless_used(session, TeacherModel, model.id)
    files = stored_files(model)
    session.commit()
    if files is None:
        return
    try:
        get_storage(settings).delete(files)
    except Exception:  # noqa: BLE001 - the model is deleted; a leftover file is logged for the operator
        log.warning("model %s is deleted but its files could not all be removed", model.id, exc_info=True)


STORED_SOURCES = ("upload", "finetune")
"""Models whose directory the service stored itself (an upload, a finetune job's teacher: `models/<tenant>/<id>`)."""


def stored_files(model: TeacherModel) -> str | None:
    """What to remove from storage with a model: the directory the service stored for it (relative to the storage
    root). An imported model is a directory of the operator's, registered in place, and stays where it is."""
    return model.path if model.source in STORED_SOURCES else None
