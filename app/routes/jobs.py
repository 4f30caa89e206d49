"""POST/GET /v1/jobs, POST /v1/jobs/{id}/cancel|pause|resume, DELETE /v1/jobs/{id}."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import admission
from app.deps import (
    Authorization,
    CurrentTenant,
    PageAfter,
    PageLimit,
    SessionDep,
    SettingsDep,
    authenticate,
    page_of,
    reads_of,
)
from app.errors import ApiError, conflict, invalid, not_found
from app.reads import row_select
from app.routes.common import PagedQuery, get_dataset, get_job, get_model, job_row, paginate, quota_error
from app.routes.finetune import check_finetune_fields, finetune_job_student
from app.schemas import Deleted, JobCreate, JobEstimate, JobOut, ListResponse
from app.store import estimates, jobs, quotas, removal
from app.store.events import notify
from app.store.ids import new_id
from app.store.job_config import check_job_body, work_dir
from app.store.orm import Checkpoint, Dataset, Job, TeacherModel, Tenant, utcnow
from app.store.queue import enqueue_committed_job
from app.store.settings import Settings
from app.store.storage import get_storage
from gkd.config import ConfigError, InitFromModel
from gkd.data.labels import LabelMapError, label_map_for
from gkd.method.properties import method_properties
from gkd.training.estimates import total_steps
from gkd.training.finetune_settings import FINETUNE

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


def _label_map(body: JobCreate, teacher: TeacherModel, train_labels: list[str],
               dev_labels: list[str] | None) -> dict[str, str]:
    """The datasets' label names onto the teacher's (gkd.data.labels): `body.label_map`, or integers onto LABEL_i."""
    try:
        return label_map_for([*train_labels, *(dev_labels or [])], teacher.labels, body.label_map)
    except LabelMapError as exc:
        raise invalid(exc.message, param="label_map" if body.label_map else "training_dataset",
                      code="labels_mismatch") from exc


def _check_against_teacher(body: JobCreate, teacher: TeacherModel, train_labels: list[str],
                           dev_labels: list[str] | None) -> dict[str, str]:
    """Every check of the body against the teacher; returns the label map the job trains with."""
    if not teacher.labels:
        raise invalid(
            f"model {teacher.id} ({teacher.name}) has no classification head; choose a fine-tuned teacher, or make "
            "one with a job of method 'finetune'",
            param="teacher",
        )
    mapping = _checked_labels(body, teacher, train_labels, dev_labels)
    _check_max_length(body, teacher)
    student = body.student
    if student.base_model is None and student.num_layers > teacher.num_layers:
        raise invalid(
            f"the student ({student.num_layers} layers) cannot be deeper than the teacher "
            f"({teacher.num_layers} layers)",
            param="student.num_layers",
        )
    if isinstance(student.init, list):
        outside = [i for i in student.init if i >= teacher.num_layers]
        if outside:
            raise invalid(
                f"teacher layers {outside} do not exist; the teacher has layers 0..{teacher.num_layers - 1}",
                param="student.init",
            )
    # The library's cross-field checks (method vs. widths etc.): the worker's config, with placeholder paths.
    try:
        check_job_body(body.method, body.student.model_dump(), body.hyperparameters.model_dump(), body.label_map,
                       list(body.export))
    except ConfigError as exc:
        raise invalid(exc.message, param=exc.param) from exc
    return mapping


def _checked_labels(body: JobCreate, teacher: TeacherModel, train_labels: list[str],
                    dev_labels: list[str] | None) -> dict[str, str]:
    """The datasets' labels against a classifier's (after `label_map`): the training data has all of them, the
    validation data no others. Returns the label map the job trains with."""
    mapping = _label_map(body, teacher, train_labels, dev_labels)
    train_labels = [mapping.get(label, label) for label in train_labels]
    dev_labels = [mapping.get(label, label) for label in dev_labels] if dev_labels is not None else None
    teacher_labels = set(teacher.labels)
    if set(train_labels) != teacher_labels:
        raise invalid(
            f"the training dataset's labels {sorted(train_labels)} differ from the teacher's labels "
            f"{sorted(teacher_labels)}",
            param="training_dataset",
            code="labels_mismatch",
        )
    if dev_labels is not None and not set(dev_labels) <= teacher_labels:
        raise invalid(
            f"the validation dataset has labels the teacher does not know: "
            f"{sorted(set(dev_labels) - teacher_labels)}",
            param="validation_dataset",
            code="labels_mismatch",
        )
    return mapping


def _check_max_length(body: JobCreate, model: TeacherModel) -> None:
    """Inputs longer than a model's position table cannot be encoded (the registry's usable length): the default
    length is capped to it, an explicit longer one is refused."""
    limit = model.max_position_embeddings
    if limit is None or body.hyperparameters.max_length <= limit:
        return
    if "max_length" not in body.hyperparameters.model_fields_set:
        body.hyperparameters.max_length = limit
        return
    raise invalid(
        f"hyperparameters.max_length {body.hyperparameters.max_length} is longer than model {model.name} "
        f"can read ({limit} tokens)",
        param="hyperparameters.max_length",
    )


def _check_base_model(body: JobCreate, teacher: TeacherModel, base: TeacherModel) -> None:
    """`student.init.model`: another encoder the student starts from, checked against the teacher with the
    registry's facts (the worker compares the two tokenizers token by token before training)."""
    init = body.student.init
    assert isinstance(init, InitFromModel)
    _check_max_length(body, base)
    if base.vocab_size != teacher.vocab_size:
        raise invalid(
            f"model {base.id} ({base.name}) has a vocabulary of {base.vocab_size} tokens and the teacher "
            f"{teacher.vocab_size}: a student must read the teacher's token ids, so both need the same tokenizer",
            param="student.init.model",
        )
    if body.student.num_layers > base.num_layers:
        raise invalid(
            f"the student ({body.student.num_layers} layers) cannot be deeper than model {base.name} "
            f"({base.num_layers} layers)",
            param="student.num_layers",
        )
    if isinstance(init.layers, list) and max(init.layers) >= base.num_layers:
        raise invalid(
            f"layers {[i for i in init.layers if i >= base.num_layers]} do not exist; model {base.name} has "
            f"layers 0..{base.num_layers - 1}",
            param="student.init.layers",
        )
    if method_properties(body.method).needs_teacher_width and base.hidden_size != teacher.hidden_size:
        raise invalid(
            f"{body.method} compares hidden states and needs the teacher's width ({teacher.hidden_size}); "
            f"model {base.name} is {base.hidden_size} wide: use gradient_kd or kd",
            param="student.init.model",
        )


def _continued_checkpoint(session: Session, tenant: Tenant, body: JobCreate, teacher: TeacherModel) -> Checkpoint:
    """`student.init.checkpoint`: a checkpoint of one of the tenant's finished jobs with the same teacher; a
    `num_layers` left out is the checkpoint's. Held (PostgreSQL) so a concurrent DELETE of its job waits."""
    param = "student.init.checkpoint"
    checkpoint_id = body.student.init_checkpoint
    assert checkpoint_id is not None
    row = session.get(Checkpoint, checkpoint_id, with_for_update=True)
    source = session.get(Job, row.job_id) if row is not None else None
    if row is None or source is None or source.tenant_id != tenant.id:
        raise not_found("checkpoint", checkpoint_id, param)
    if source.status not in jobs.TERMINAL_STATUSES:
        raise invalid(f"job {source.id} is {source.status}; continue from a finished job's checkpoint", param=param,
                      code="job_active")
    if source.teacher_id != teacher.id:
        raise invalid(f"checkpoint {row.id} was distilled from teacher {source.teacher_id}; a continued student "
                      f"keeps its teacher's labels and tokenizer, so use teacher {source.teacher_id}", param=param)
    if source.student.get("vocabulary") == "training_data":
        raise invalid(f"checkpoint {row.id} has a pruned vocabulary (its job set student.vocabulary "
                      "'training_data'): it no longer reads the teacher's token ids; continue from a job with "
                      "student.vocabulary 'full'", param=param)
    depth = int(source.student.get("num_layers") or 0)
    if "num_layers" not in body.student.model_fields_set:
        body.student.num_layers = depth
    elif body.student.num_layers != depth:
        raise invalid(f"checkpoint {row.id} has {depth} layers; leave student.num_layers out or set it to {depth}",
                      param="student.num_layers")
    return row


def _check_integrations(body: JobCreate, settings: Settings) -> None:
    """A job's trackers log to the operator's MLflow server only: never to one the tenant names, which could make
    the worker write to any path or host it can reach."""
    for index, integration in enumerate(body.integrations):
        param = f"integrations.{index}"
        if not settings.mlflow_tracking_uri:
            raise invalid("this service has no MLflow tracking server (the operator sets GKD_MLFLOW_TRACKING_URI)",
                          param=param, code="integration_unavailable")
        if integration.tracking_uri is not None and integration.tracking_uri != settings.mlflow_tracking_uri:
            raise invalid("jobs log to the service's own MLflow tracking server: leave tracking_uri out",
                          param=f"{param}.tracking_uri")


def _source_student(session: Session, checkpoint: Checkpoint) -> dict[str, Any]:
    """The `student` of the job a continued checkpoint comes from (its width is the continued student's)."""
    source = session.get(Job, checkpoint.job_id)
    return dict(source.student) if source is not None else {}


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _existing_for_key(session: Session, tenant: Tenant, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise conflict(
            "this Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
        )
    return job


def _estimate(session: Session, tenant: Tenant, body: JobCreate, teacher: TeacherModel, train: Dataset,
              student: dict[str, Any], settings: Settings) -> JobEstimate:
    """The dry run's answer for a body that passed every check of a create (docs/design.md, "Estimates")."""
    hp = body.hyperparameters
    rows_per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps = total_steps(train.rows, hp.batch_size, hp.gradient_accumulation_steps, hp.epochs)
    width = estimates.student_width(session, student, teacher)
    seconds: dict[str, float] = {}
    per_step: dict[str, float] = {}
    basis: dict[str, estimates.Basis] = {}
    for kind in estimates.device_kinds_for(body.device, settings.auto_device):
        key = estimates.CalibrationKey.of(body.method, width, body.student.num_layers, hp.max_length, kind)
        rate = estimates.step_rate(session, key, hp.max_length)
        per_step[kind] = float(f"{rate.seconds_per_row * rows_per_step:.6g}")
        seconds[kind] = float(f"{rate.seconds_per_row * rows_per_step * steps:.6g}")
        basis[kind] = rate.basis
    return JobEstimate(
        total_steps=steps,
        steps_per_epoch=steps // hp.epochs,
        teacher_cache_exists=body.method == FINETUNE  # a fine-tuning builds no teacher cache
        or estimates.teacher_cache_likely(session, tenant.id, teacher.id, train, hp.max_length),
        estimated_seconds=seconds,
        seconds_per_step=per_step,
        basis=basis,
    )


@router.post("", status_code=201, response_model=JobOut, responses={
    200: {"model": JobEstimate, "description": "With `dry_run=true`: the job's estimate; nothing is stored."}})
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    dry_run: Annotated[bool, Query(description="Validate the body like a create and answer its estimate (200) "
                                   "instead of creating the job; nothing is stored.")] = False,
) -> JobOut | Response:
    digest = _request_hash(body.model_dump(mode="json"))
    if idempotency_key and not dry_run:
        existing = _existing_for_key(session, tenant, idempotency_key, digest)
        if existing is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return JobOut.of(existing)

    admission.check_devices(body, settings)
    finetune = body.method == FINETUNE
    if finetune:
        check_finetune_fields(body)
    teacher = get_model(session, tenant, body.teacher, param="teacher", lock=True)
    continued = _continued_checkpoint(session, tenant, body, teacher) if body.student.init_checkpoint else None
    train = get_dataset(session, tenant, body.training_dataset, param="training_dataset", lock=True)
    dev = None
    if body.validation_dataset is not None:
        dev = get_dataset(session, tenant, body.validation_dataset, param="validation_dataset", lock=True)
    _check_integrations(body, settings)
    base = None
    if finetune:  # the teacher is the base model: a bare encoder learns the data's labels, a classifier keeps its own
        _check_max_length(body, teacher)
        label_map = _checked_labels(body, teacher, train.labels, dev.labels if dev else None) if teacher.labels else {}
        student = finetune_job_student(body, teacher, train.labels, dev.labels if dev else None)
    else:
        label_map = _check_against_teacher(body, teacher, train.labels, dev.labels if dev else None)
        student = body.student.model_dump(mode="json")
    if body.student.base_model is not None:
        base = get_model(session, tenant, body.student.base_model, param="student.init.model", lock=True)
        _check_base_model(body, teacher, base)
        student["init"]["model"] = base.id  # the worker resolves the id; a name could later mean another model
    continued_student = _source_student(session, continued) if continued is not None else None
    admission.check_memory(body, settings, teacher, base, continued_student)

    try:  # the tenant stays locked from here to the commit: concurrent creates take turns
        # a finetune job makes a model: one that cannot be stored is refused now, not after its training
        quotas.check(session, settings, tenant.id, active_jobs=1, models=1 if finetune else 0)
    except quotas.QuotaExceeded as exc:
        raise quota_error(exc) from exc
    if dry_run:
        estimate = _estimate(session, tenant, body, teacher, train, student, settings)
        session.rollback()  # releases the locks a create would have held to its commit; nothing was written
        return JSONResponse(estimate.model_dump(mode="json"), status_code=200)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant.id,
        status=jobs.INITIAL_STATUS,
        method=body.method,
        teacher_id=teacher.id,
        training_dataset_id=train.id,
        validation_dataset_id=dev.id if dev else None,
        student=student,
        hyperparameters=body.hyperparameters.model_dump(mode="json"),
        label_map=label_map or None,
        init_checkpoint_id=continued.id if continued is not None else None,
        export=list(body.export) or None,
        integrations=[i.model_dump(mode="json", exclude={"tracking_uri"}) for i in body.integrations] or None,
        name=body.name,
        meta=body.metadata,
        progress={},
        metrics={},
        versions={},
        attempts=0,
        last_seq=0,
        idempotency_key=idempotency_key or None,
        request_hash=digest,
        created_at=utcnow(),
        queue_kind=body.device,
        devices=body.devices,
    )
    session.add(job)
    try:
        session.flush()
        _check_still_live(session, job, base)
        jobs.record_created(session, job.id)
        # The answer is built before the commit: a body that cannot be serialised rolls the job back instead
        # of leaving a committed (and enqueued) job that a retrying client would create again.
        JobOut.of(job).model_dump_json()
        session.commit()
    except IntegrityError:
        session.rollback()
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the insert.
        existing = _existing_for_key(session, tenant, idempotency_key, digest)
        if existing is None:
            raise
        response.headers["Idempotent-Replayed"] = "true"
        return JobOut.of(existing)
    enqueue_committed_job(request.app.state.celery(), settings, session, job.id)
    session.refresh(job)
    return JobOut.of(job)


def _check_still_live(session: Session, job: Job, base: TeacherModel | None) -> None:
    """After the INSERT, in its transaction: a dataset or model deleted since it was read is a 404 and no job
    (app.store.removal: the delete and the create never both succeed, on SQLite as on PostgreSQL)."""
    references: list[tuple[str, removal.Removable, str]] = [
        ("teacher", TeacherModel, job.teacher_id), ("training_dataset", Dataset, job.training_dataset_id)]
    if job.validation_dataset_id is not None:
        references.append(("validation_dataset", Dataset, job.validation_dataset_id))
    if base is not None:
        references.append(("student.init.model", TeacherModel, base.id))
    removed = removal.first_removed(session, references)
    if removed is not None:
        session.rollback()
        param, row_id = removed
        raise not_found("model" if param in ("teacher", "student.init.model") else "dataset", row_id, param)


_JOBS_OF_TENANT = row_select(Job, JobOut.READS).where(Job.tenant_id == bindparam("tenant_id"))
_JOBS = PagedQuery.of(_JOBS_OF_TENANT, Job.id)
_JOBS_WITH_STATUS = PagedQuery.of(_JOBS_OF_TENANT.where(Job.status == bindparam("status")), Job.id)


@router.get("", response_model=ListResponse[JobOut])
async def list_jobs(
    request: Request,
    tenant: CurrentTenant,
    status: Annotated[jobs.JobStatus | None, Query()] = None,
    limit: PageLimit = None,
    after: PageAfter = None,
) -> Response:
    # The page's parameters are the route's own rather than the `PageDep` sub-dependency: one solve less per request.
    # The key is still a sub-dependency, solved before these parameters are validated (a bad key is a 401 first).
    page = page_of(request, limit, after)
    query, params = (_JOBS, {"tenant_id": tenant.id}) if status is None else (
        _JOBS_WITH_STATUS, {"tenant_id": tenant.id, "status": status})
    return await reads_of(request).json(
        lambda db: ListResponse[JobOut].model_validate(paginate(db, query, params, page, "job", JobOut.of))
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job_route(job_id: str, request: Request, authorization: Authorization = None) -> Response:
    # The key is checked here rather than by the `CurrentTenant` sub-dependency (deps.authenticate): the same 401s,
    # and a job id (any string) cannot fail validation, so no answer changes order.
    tenant = await authenticate(request, authorization)
    return await reads_of(request).json(lambda db: JobOut.of(job_row(db, tenant, job_id)))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> JobOut:
    job = get_job(session, tenant, job_id)
    session.rollback()
    # Conditional updates: whichever of API and worker moves the job first wins, the other sees it.
    if jobs.request_cancel(session, job.id):
        session.commit()
        notify(settings.notify_url, job.id)
        if _current(session, job.id).status == jobs.CANCELLED:  # no worker held it: its scratch is ours to remove
            _remove_scratch(settings, job.id)
    else:
        session.rollback()
        current = session.get(Job, job.id, populate_existing=True)
        assert current is not None
        if current.status in jobs.TERMINAL_STATUSES:
            raise ApiError(409, f"job {job.id} already finished with status {current.status!r}",
                           code="job_finished")
    return JobOut.of(_current(session, job.id))


def _remove_scratch(settings: Settings, job_id: str) -> None:
    """Remove the scratch (a paused or handed-back job's saved training state) of a job cancelled while no worker
    held it, as the worker does for the jobs it ends; the checkpoint archives stay."""
    try:
        get_storage(settings).delete(work_dir(job_id))
    except Exception:  # noqa: BLE001 - the job is cancelled; a leftover directory is logged for the operator
        log.warning("job %s is cancelled but its scratch could not be removed", job_id, exc_info=True)


def _current(session: Session, job_id: str) -> Job:
    current = session.get(Job, job_id, populate_existing=True)
    assert current is not None
    return current


def _illegal(job: Job, action: str, allowed: str) -> ApiError:
    """The 409 of a pause or resume the job's status does not allow."""
    if job.status in jobs.TERMINAL_STATUSES:
        return conflict(f"job {job.id} already finished with status {job.status!r}; it cannot be {action}",
                        code="job_finished")
    return conflict(f"job {job.id} is {job.status}; only a {allowed} job can be {action}", code="illegal_transition")


@router.post("/{job_id}/pause", response_model=JobOut)
def pause_job(job_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> JobOut:
    """A queued job is `paused` at once; a running one is `pausing` until its worker has saved the training state
    at its next step, then `paused`. Asking again while pausing or paused answers the job as it is."""
    job = get_job(session, tenant, job_id)
    session.rollback()
    if jobs.request_pause(session, job.id):
        session.commit()
        notify(settings.notify_url, job.id)
        return JobOut.of(_current(session, job.id))
    session.rollback()
    current = _current(session, job.id)
    if current.status in (jobs.PAUSING, jobs.PAUSED):
        return JobOut.of(current)
    raise _illegal(current, "paused", "queued or running")


@router.post("/{job_id}/resume", response_model=JobOut)
def resume_job(job_id: str, request: Request, tenant: CurrentTenant, session: SessionDep,
               settings: SettingsDep) -> JobOut:
    """A paused job is queued again and continues from its saved training state (not counted again against the
    tenant's quota: a paused job is still unfinished)."""
    job = get_job(session, tenant, job_id)
    session.rollback()
    if not jobs.resume(session, job.id):
        session.rollback()
        raise _illegal(_current(session, job.id), "resumed", "paused")
    session.commit()
    notify(settings.notify_url, job.id)
    enqueue_committed_job(request.app.state.celery(), settings, session, job.id)
    return JobOut.of(_current(session, job.id))


@router.delete("/{job_id}", response_model=Deleted)
def delete_job(job_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> Deleted:
    """A finished job goes with its events, checkpoints and scratch; an unfinished one is a 409 (cancel it first)."""
    job = get_job(session, tenant, job_id)
    dependent = jobs.job_needing_checkpoints_of(session, job.id)
    if dependent is not None:
        raise conflict(f"job {dependent} continues from a checkpoint of job {job.id} and has not finished",
                       code="resource_in_use")
    if not jobs.delete_finished(session, job.id):
        session.rollback()
        current = session.scalar(select(Job.status).where(Job.id == job.id))
        if current is None:  # deleted by a concurrent request
            raise not_found("job", job.id)
        raise conflict(f"job {job.id} is {current}; only a finished job can be deleted (cancel it first)",
                       code="job_active")
    session.commit()
    try:  # the rows are gone first, so no client is ever shown a checkpoint whose file was removed
        get_storage(settings).delete(jobs.job_files(job.id))
    except Exception:  # noqa: BLE001 - the job is deleted; a leftover file is logged for the operator
        log.warning("job %s is deleted but its files could not all be removed", job.id, exc_info=True)
    return Deleted(id=job.id, object="job")
