"""POST/GET /v1/jobs, POST /v1/jobs/{id}/cancel, DELETE /v1/jobs/{id}."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import admission
from app.deps import CurrentTenant, PageDep, ReadsDep, SessionDep, SettingsDep
from app.errors import ApiError, conflict, invalid, not_found
from app.reads import row_select
from app.routes.common import PagedQuery, get_dataset, get_job, get_model, job_row, paginate, quota_error
from app.schemas import Deleted, JobCreate, JobOut, ListResponse
from app.store import jobs, quotas
from app.store.events import notify
from app.store.ids import new_id
from app.store.job_config import check_job_body
from app.store.orm import Checkpoint, Job, TeacherModel, Tenant, utcnow
from app.store.queue import enqueue_committed_job
from app.store.storage import get_storage
from gkd.config import ConfigError, InitFromModel
from gkd.data.labels import LabelMapError, label_map_for
from gkd.method.properties import method_properties

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
            f"model {teacher.id} ({teacher.name}) has no classification head; choose a fine-tuned teacher",
            param="teacher",
        )
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
    depth = int(source.student.get("num_layers") or 0)
    if "num_layers" not in body.student.model_fields_set:
        body.student.num_layers = depth
    elif body.student.num_layers != depth:
        raise invalid(f"checkpoint {row.id} has {depth} layers; leave student.num_layers out or set it to {depth}",
                      param="student.num_layers")
    return row


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


@router.post("", status_code=201, response_model=JobOut)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobOut:
    digest = _request_hash(body.model_dump(mode="json"))
    if idempotency_key:
        existing = _existing_for_key(session, tenant, idempotency_key, digest)
        if existing is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return JobOut.of(existing)

    admission.check_devices(body, settings)
    teacher = get_model(session, tenant, body.teacher, param="teacher")
    continued = _continued_checkpoint(session, tenant, body, teacher) if body.student.init_checkpoint else None
    train = get_dataset(session, tenant, body.training_dataset, param="training_dataset", lock=True)
    dev = None
    if body.validation_dataset is not None:
        dev = get_dataset(session, tenant, body.validation_dataset, param="validation_dataset", lock=True)
    label_map = _check_against_teacher(body, teacher, train.labels, dev.labels if dev else None)
    student = body.student.model_dump(mode="json")
    base = None
    if body.student.base_model is not None:
        base = get_model(session, tenant, body.student.base_model, param="student.init.model")
        _check_base_model(body, teacher, base)
        student["init"]["model"] = base.id  # the worker resolves the id; a name could later mean another model
    continued_student = _source_student(session, continued) if continued is not None else None
    admission.check_memory(body, settings, teacher, base, continued_student)

    try:  # the tenant stays locked from here to the commit: concurrent creates take turns
        quotas.check(session, settings, tenant.id, active_jobs=1)
    except quotas.QuotaExceeded as exc:
        raise quota_error(exc) from exc
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


_JOBS_OF_TENANT = row_select(Job).where(Job.tenant_id == bindparam("tenant_id"))
_JOBS = PagedQuery.of(_JOBS_OF_TENANT, Job.id)
_JOBS_WITH_STATUS = PagedQuery.of(_JOBS_OF_TENANT.where(Job.status == bindparam("status")), Job.id)


@router.get("", response_model=ListResponse[JobOut])
async def list_jobs(
    tenant: CurrentTenant,
    reads: ReadsDep,
    page: PageDep,
    status: Annotated[jobs.JobStatus | None, Query()] = None,
) -> Response:
    query, params = (_JOBS, {"tenant_id": tenant.id}) if status is None else (
        _JOBS_WITH_STATUS, {"tenant_id": tenant.id, "status": status})
    return await reads.json(
        lambda db: ListResponse[JobOut].model_validate(paginate(db, query, params, page, "job", JobOut.of))
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job_route(job_id: str, tenant: CurrentTenant, reads: ReadsDep) -> Response:
    return await reads.json(lambda db: JobOut.of(job_row(db, tenant, job_id)))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> JobOut:
    job = get_job(session, tenant, job_id)
    session.rollback()
    # Conditional updates: whichever of API and worker moves the job first wins, the other sees it.
    if jobs.request_cancel(session, job.id):
        session.commit()
        notify(settings.notify_url, job.id)
    else:
        session.rollback()
        current = session.get(Job, job.id, populate_existing=True)
        assert current is not None
        if current.status in jobs.TERMINAL_STATUSES:
            raise ApiError(409, f"job {job.id} already finished with status {current.status!r}",
                           code="job_finished")
    current = session.get(Job, job.id, populate_existing=True)
    assert current is not None
    return JobOut.of(current)


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
