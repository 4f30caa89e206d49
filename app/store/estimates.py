"""Job estimates (`POST /v1/jobs?dry_run=true`) and the calibration workers record for them.

A calibration row holds the running mean of measured seconds per optimiser step per training row, per method,
student width and depth, length bucket and device kind (`StepCalibration`). An estimate uses the matching row
when there is one (`basis: measured`) and `gkd.training.estimates.default_seconds_per_row` otherwise
(`basis: default`, a rough figure). Workers add a measurement when a job's training ends (`record`), inside
their fenced write, so a fenced-off worker adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.store.orm import Checkpoint, Dataset, Job, StepCalibration, TeacherModel, utcnow
from gkd.training.estimates import default_seconds_per_row, length_bucket

Basis = Literal["default", "measured"]
DEVICE_KINDS: tuple[str, ...] = ("cpu", "gpu")


@dataclass(frozen=True)
class CalibrationKey:
    """What a job's speed is assumed to depend on (besides the batch size, which the per-row figure divides out)."""

    method: str
    student_width: int
    student_depth: int
    length_bucket: int
    device_kind: str

    @classmethod
    def of(cls, method: str, width: int, depth: int, max_length: int, device_kind: str) -> CalibrationKey:
        return cls(method, width, depth, length_bucket(max_length), device_kind)

    def where(self) -> list[Any]:
        return [StepCalibration.method == self.method, StepCalibration.student_width == self.student_width,
                StepCalibration.student_depth == self.student_depth,
                StepCalibration.length_bucket == self.length_bucket, StepCalibration.device_kind == self.device_kind]


@dataclass(frozen=True)
class StepRate:
    seconds_per_row: float
    basis: Basis


def student_width(session: Session, student: dict[str, Any], teacher: TeacherModel) -> int:
    """The width of a job's student (its stored `student`, with a starting model by id): its own `hidden_size`,
    the starting model's, the continued checkpoint's student's, or the teacher's."""
    if student.get("hidden_size"):
        return int(student["hidden_size"])
    init = student.get("init")
    if isinstance(init, dict) and "model" in init:
        base = session.get(TeacherModel, init["model"])
        if base is not None:
            return base.hidden_size
    if isinstance(init, dict) and "checkpoint" in init:
        checkpoint = session.get(Checkpoint, init["checkpoint"])
        source = session.get(Job, checkpoint.job_id) if checkpoint is not None else None
        if source is not None and (source.student or {}).get("hidden_size"):
            return int(source.student["hidden_size"])
    return teacher.hidden_size


def job_key(session: Session, job: Job, device_kind: str) -> CalibrationKey | None:
    """The calibration key of a stored job on a worker of `device_kind` (None when its teacher is gone)."""
    teacher = session.get(TeacherModel, job.teacher_id)
    if teacher is None:
        return None
    depth = int((job.student or {}).get("num_layers") or 0)
    max_length = int((job.hyperparameters or {}).get("max_length") or 0)
    return CalibrationKey.of(job.method, student_width(session, job.student or {}, teacher), depth, max_length,
                             device_kind)


def step_rate(session: Session, key: CalibrationKey, max_length: int) -> StepRate:
    """Seconds per step and training row for `key`: measured when a worker recorded one, else the default."""
    measured = session.scalar(select(StepCalibration.seconds_per_row).where(*key.where()))
    if measured is not None:
        return StepRate(float(measured), "measured")
    return StepRate(default_seconds_per_row(key.student_width, key.student_depth, max_length, key.device_kind),
                    "default")


def device_kinds_for(queue_kind: str, auto_device: str) -> tuple[str, ...]:
    """The worker kinds a job could run on: its `device`, or for `auto` both (the deployment's first)."""
    if queue_kind in DEVICE_KINDS:
        return (queue_kind,)
    return (auto_device, *(kind for kind in DEVICE_KINDS if kind != auto_device))


def record(session: Session, key: CalibrationKey, seconds_per_row: float) -> None:
    """Fold one job's measured rate into the running mean of `key` (one atomic UPDATE, or the first row)."""
    mean, samples = StepCalibration.seconds_per_row, StepCalibration.samples
    changed = session.execute(
        update(StepCalibration).where(*key.where())
        .values(seconds_per_row=mean + (seconds_per_row - mean) / (samples + 1), samples=samples + 1,
                updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed:
        return
    try:
        with session.begin_nested():  # a worker recording the same key at once inserts first: then update
            session.add(StepCalibration(method=key.method, student_width=key.student_width,
                                        student_depth=key.student_depth, length_bucket=key.length_bucket,
                                        device_kind=key.device_kind, seconds_per_row=seconds_per_row, samples=1,
                                        updated_at=utcnow()))
    except IntegrityError:
        record(session, key, seconds_per_row)


def teacher_cache_likely(session: Session, tenant_id: str, teacher_id: str, dataset: Dataset,
                         max_length: int) -> bool:
    """Whether one of the tenant's jobs already built the teacher cache for this teacher, data (by content) and
    length: it trained past the cache. Workers keep caches in a shared directory keyed by teacher weights, data and
    length; an operator may clear it, so this is a likelihood, never a promise. Only the tenant's own jobs are
    consulted, so nothing is learnt about other tenants' data."""
    candidates = session.execute(
        select(Job.hyperparameters, Job.progress, Job.status)
        .join(Dataset, Dataset.id == Job.training_dataset_id)
        .where(Job.tenant_id == tenant_id, Job.teacher_id == teacher_id, Dataset.sha256 == dataset.sha256)
    ).all()
    for hyperparameters, progress, status in candidates:
        if int((hyperparameters or {}).get("max_length") or 0) != max_length:
            continue
        if status == "succeeded" or int((progress or {}).get("step") or 0) > 0:
            return True
    return False


def finish_time(now: datetime, seconds_left: float | None) -> str | None:
    """The ISO time a job is expected to finish, `seconds_left` from `now`."""
    if seconds_left is None:
        return None
    return (now + timedelta(seconds=max(0.0, seconds_left))).isoformat()
