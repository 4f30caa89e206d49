"""A job's `DistillConfig`, built in one place: from the job body with placeholder paths when the API validates it
(`check_job_body`), and from the job's row with its files fetched from storage when the worker runs it
(`config_for_job`). The library's own checks (method against widths, saliency form...) run in both."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.store.db import sessionmaker_for
from app.store.orm import Checkpoint, Dataset, Job, TeacherModel
from app.store.settings import Settings
from app.store.storage import get_storage
from app.store.storage.archive import extract_archive
from gkd.config import ConfigError, DistillConfig
from gkd.training.finetune_settings import FINETUNE, TRAINED_AS


def job_config(*, method: str, student: dict[str, Any], hyperparameters: dict[str, Any],
               label_map: dict[str, str] | None, teacher: str, train: str, dev: str | None,
               run: dict[str, Any] | None = None, export: list[str] | None = None,
               integrations: list[dict[str, Any]] | None = None) -> DistillConfig:
    """The `DistillConfig` of a job's settings and file paths; `gkd.config.ConfigError` names a bad field."""
    return DistillConfig.parse({
        "integrations": integrations or [],
        "method": method,
        "teacher": teacher,
        "student": student,
        "data": {"train": train, "dev": dev, "label_map": label_map},
        "hyperparameters": hyperparameters,
        "run": run or {},
        "export": export or [],
    })


def check_job_body(method: str, student: dict[str, Any], hyperparameters: dict[str, Any],
                   label_map: dict[str, str] | None, export: list[str] | None = None) -> DistillConfig:
    """The body's settings as the worker will build them, with placeholder paths (the API's validation)."""
    return job_config(method=method, student=student, hyperparameters=hyperparameters, label_map=label_map,
                      teacher="teacher", train="train", dev=None, export=export)


def tracker_entries(settings: Settings, job: Job) -> list[dict[str, Any]]:
    """The job's `integrations` as the library's entries: the operator's tracking server, the tenant's experiment
    and run name, the job's id as a tag and its checkpoints as `gkd://jobs/<id>/checkpoints/<kind>`."""
    if not job.integrations:
        return []
    if not settings.mlflow_tracking_uri:
        raise ConfigError("the job logs to MLflow but this worker has no GKD_MLFLOW_TRACKING_URI", "integrations")
    return [{"type": entry["type"], "experiment": entry["experiment"], "run_name": entry.get("run_name"),
             "tracking_uri": settings.mlflow_tracking_uri, "tags": {"gkd.job_id": job.id},
             "artifact_base_uri": f"gkd://jobs/{job.id}/checkpoints/"} for entry in job.integrations]


def _unpacked_checkpoint(settings: Settings, session: Session, job_id: str, checkpoint_id: str) -> Path:
    """The checkpoint archive unpacked into the job's scratch (`init/`), once per worker: a directory is only
    renamed into place when complete, so an attempt killed mid-way leaves nothing a later one would trust."""
    target = settings.storage / work_dir(job_id) / "init"
    if (target / "config.json").is_file():
        return target
    row = session.get(Checkpoint, checkpoint_id)
    if row is None:
        raise RuntimeError(f"the checkpoint {checkpoint_id} the student continues from no longer exists")
    archive = get_storage(settings).materialize(row.path)
    partial = target.with_name(".init.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    root = extract_archive(archive, partial, max_members=settings.max_archive_members,
                           max_bytes=settings.max_model_bytes)
    if root != partial:
        root.rename(target)
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(target)
    return target


def work_dir(job_id: str) -> str:
    """A job's scratch, relative to the storage root: the trainer's output_dir (exported directories, state)."""
    return f"jobs/{job_id}/work"


def config_for_job(settings: Settings, job_id: str) -> DistillConfig:
    """The job's config for this worker: teacher, datasets and a starting model fetched to local paths (from a
    bucket when GKD_STORAGE=s3, with the latest training state), run settings from the worker's settings."""
    with sessionmaker_for(settings.database_url)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return _config_for(settings, session, job)


def _config_for(settings: Settings, session: Session, job: Job) -> DistillConfig:
    teacher = session.get(TeacherModel, job.teacher_id)
    train = session.get(Dataset, job.training_dataset_id)
    dev = session.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id else None
    if teacher is None or train is None:
        raise RuntimeError("the job's teacher or training dataset no longer exists")
    from gkd.training.state import STATE_FILE  # torch: imported by the worker only

    storage = get_storage(settings)  # a bucket's objects are downloaded to this worker's storage directory
    work = settings.storage / work_dir(job.id)
    state = (work / "state" / STATE_FILE).relative_to(settings.storage).as_posix()
    if storage.kind != "local" and storage.exists(state):
        storage.materialize(state, refresh=True)  # the latest state, whoever saved it
    student = dict(job.student)
    init = student.get("init")
    if isinstance(init, dict) and "model" in init:  # another encoder the student starts from, by id
        base = session.get(TeacherModel, init["model"])
        if base is None:
            raise RuntimeError(f"the student's starting model {init['model']} no longer exists")
        student["init"] = {**init, "model": str(storage.materialize(base.path))}
    elif isinstance(init, dict) and "checkpoint" in init:  # a finished job's checkpoint the student continues from
        student["init"] = {"checkpoint": str(_unpacked_checkpoint(settings, session, job.id, init["checkpoint"]))}
    return job_config(
        method=TRAINED_AS if job.method == FINETUNE else job.method, student=student,
        hyperparameters=job.hyperparameters, label_map=job.label_map,
        teacher=str(storage.materialize(teacher.path)), train=str(storage.materialize(train.path)),
        dev=str(storage.materialize(dev.path)) if dev else None,
        run={"output_dir": str(work), "cache_dir": str(settings.cache_dir), "device": settings.worker_device,
             "num_threads": settings.worker_num_threads, "devices": job.devices or 1},
        export=job.export,
        integrations=tracker_entries(settings, job),
    )
