"""Request and response bodies. The job's `student` and `hyperparameters` are the library's own pydantic
models (gkd.config), so their defaults and limits are written once."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints, field_validator

from app.store.orm import Checkpoint, Dataset, Job, JobEvent, TeacherModel, Webhook, WebhookDelivery
from app.store.webhook_outbox import PENDING, EventType
from app.store.webhook_urls import MAX_URL_LENGTH
from gkd.config import (
    DataSpec,
    DistillConfig,
    ExportFormat,
    Hyperparameters,
    LabelName,
    StorableText,
    StudentSpec,
)
from gkd.data.validation import ValidationReport
from gkd.method.properties import Method

T = TypeVar("T")

JobMethod = Literal[Method, "finetune"]
"""A job's method: a distillation method, or `finetune` (gkd.training.finetune_settings.FINETUNE)."""

MAX_METADATA_CHARS = 16_384
"""Bound on a job's metadata as compact JSON: it is a label for the caller, not a store."""

MetadataKey = Annotated[StorableText, StringConstraints(min_length=1, max_length=100)]
MetadataText = Annotated[StorableText, StringConstraints(max_length=2_000)]
# Integers within 64 bits and finite floats: what JSONB and SQLite's JSON both hold and give back alike.
MetadataValue = MetadataText | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | FiniteFloat | bool | None


def _bounded_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Keys and values are bounded one by one; the total too, so 50 keys of 2,000 characters stay small."""
    if len(json.dumps(value, separators=(",", ":"))) > MAX_METADATA_CHARS:
        raise ValueError(f"metadata must be at most {MAX_METADATA_CHARS} characters as JSON")
    return value


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    format: str
    rows: int
    labels: list[str]
    sha256: str
    size_bytes: int
    validation: ValidationReport  # the library's report, defined once in gkd.data
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,
            rows=row.rows,
            labels=row.labels,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            # rows and labels are the dataset's own (rows written before they were stored in the report lack them)
            validation=ValidationReport.model_validate({**row.validation, "rows": row.rows, "labels": row.labels}),
            created_at=row.created_at,
        )


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    owner: Literal["tenant", "global"]
    source: str
    task: str | None
    model_type: str | None
    labels: list[str]
    num_layers: int
    hidden_size: int
    num_parameters: int
    vocab_size: int | None
    family: str | None = Field(None, description="Encoder family (docs/teachers.md); null for older rows.")
    num_heads: int | None = None
    max_positions: int | None = Field(None, description="Usable input length in tokens.")
    embedding_size: int | None = Field(None, description="Width of the input embeddings (ALBERT, ELECTRA: "
                                       "narrower than hidden_size).")
    created_at: datetime

    @classmethod
    def of(cls, row: TeacherModel) -> ModelOut:
        return cls(
            id=row.id,
            name=row.name,
            owner="global" if row.tenant_id is None else "tenant",
            source=row.source,
            task=row.task,
            model_type=row.model_type,
            labels=row.labels,
            num_layers=row.num_layers,
            hidden_size=row.hidden_size,
            num_parameters=row.num_parameters,
            vocab_size=row.vocab_size,
            family=row.family,
            num_heads=row.num_attention_heads,
            max_positions=row.max_position_embeddings,
            embedding_size=row.embedding_size,
            created_at=row.created_at,
        )


class JobIntegration(BaseModel):
    """An experiment tracker the job logs to. The service logs to its operator's MLflow server
    (GKD_MLFLOW_TRACKING_URI); the job names the experiment and run."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mlflow"] = Field(..., description="The tracker: 'mlflow'.")
    experiment: Annotated[StorableText, StringConstraints(min_length=1, max_length=250)] = Field(
        ..., description="MLflow experiment name; created when missing.")
    run_name: Annotated[StorableText, StringConstraints(max_length=250)] | None = Field(
        None, description="MLflow run name; null: MLflow picks one.")
    tracking_uri: Annotated[StorableText, StringConstraints(max_length=2000)] | None = Field(
        None, description="Leave out: the operator's tracking server is used, and any other is refused.")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: StorableText = Field(..., description="Id or name of a registered teacher model (yours or a global one).")
    method: JobMethod = Field(
        DistillConfig.model_fields["method"].default,
        description="A distillation method, or `finetune`: fine-tune the `teacher` (a base encoder or a classifier) "
                    "on the training dataset into a new model of yours (the job's `fine_tuned_model`).")
    student: StudentSpec = Field(default_factory=StudentSpec)
    training_dataset: StorableText
    validation_dataset: StorableText | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    label_map: dict[LabelName, LabelName] | None = DataSpec.model_fields["label_map"]
    export: list[ExportFormat] = DistillConfig.model_fields["export"]
    name: StorableText | None = Field(None, max_length=300)
    metadata: Annotated[dict[MetadataKey, MetadataValue], AfterValidator(_bounded_metadata)] = Field(
        default_factory=dict, max_length=50, description="Your own labels: up to 50 keys, 16 KiB as JSON."
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Worker queue: `cpu`, `gpu`, or `auto` (the deployment's GKD_AUTO_DEVICE)."
    )
    devices: int = Field(1, ge=1, le=16, description="Data-parallel processes (GPUs, or CPU processes) of one job; "
                         "at most what a worker of its queue gives a job (GKD_WORKER_DEVICES, 1 on a CPU worker).")
    integrations: list[JobIntegration] = Field(
        default_factory=list, max_length=4, description="Experiment trackers the job logs its params, metrics and "
        "checkpoint URIs to (docs/integrations.md).")


class JobEstimate(BaseModel):
    """What `POST /v1/jobs?dry_run=true` answers: the job's size and duration; nothing is stored."""

    object: Literal["job.estimate"] = "job.estimate"
    total_steps: int = Field(description="Optimiser steps the job will train.")
    steps_per_epoch: int
    teacher_cache_exists: bool = Field(description="Whether one of your jobs already built the teacher cache for "
                                       "this teacher, training data (by content) and max_length; if not, the job "
                                       "spends time building it before training (not in estimated_seconds).")
    estimated_seconds: dict[str, float] = Field(description="Training time per worker kind (`cpu`, `gpu`): the job's "
                                                "own `device`, or both for `auto`, the deployment's first.")
    seconds_per_step: dict[str, float] = Field(description="The per-step time each estimate is built from.")
    basis: dict[str, Literal["default", "measured"]] = Field(
        description="Per worker kind: `measured` (the mean speed workers recorded for jobs of this method, student "
                    "width and depth and length bucket) or `default` (a rough formula from the student's size).")


class PhaseOut(BaseModel):
    """What the job is doing now (docs/design.md, "Phases")."""

    phase: str = Field(..., description="validating, loading_teacher, teacher_cache, training, evaluating, packing "
                                        "or uploading.")
    detail: str = Field("", description="Which part of the phase, e.g. the split a teacher cache is built for.")
    done: int = Field(0, description="Units of the phase done.")
    total: int | None = Field(None, description="Units in the phase; null while not known.")
    unit: str = Field("", description="What `done` and `total` count: rows, batches, steps, archives.")
    fraction: float | None = Field(None, description="done / total; null while the total is not known.")
    elapsed_seconds: float = Field(0.0, description="Seconds since the phase began.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left in this phase.")


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None
    phase: PhaseOut | None = Field(None, description="The current phase with its own progress; null before the "
                                                     "worker starts.")


# Looked up once: `Progress.model_fields` builds its answer on each access, and a page of the list reads it for
# every key of every row's progress (half of `JobOut.of`'s time, measured).
_PROGRESS_FIELDS = frozenset(Progress.model_fields)


def job_metrics(stored: dict[str, Any] | None) -> dict[str, Any]:
    """A job's `metrics`: latest and best figures, `warnings` (codes of its `warning` events) when it has any, and
    `beta_auto` (what `hyperparameters.beta: "auto"` chose, with the dev figures it chose from) once chosen."""
    stored = stored or {}
    out = {"latest": stored.get("latest", {}), "best": stored.get("best", {})}
    if stored.get("warnings"):
        out["warnings"] = list(stored["warnings"])
    if isinstance(stored.get("beta_auto"), dict):
        out["beta_auto"] = stored["beta_auto"]
    return out


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    name: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    teacher: str
    method: str
    student: dict[str, Any]
    training_dataset: str
    validation_dataset: str | None
    hyperparameters: dict[str, Any]
    label_map: dict[str, str] | None = None
    export: list[str] = Field(default_factory=list, description="Deployable copies of the best student this job "
                              "makes: checkpoint kinds best-onnx, best-onnx-int8.")
    metadata: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any]
    error: str | None
    attempts: int
    versions: dict[str, Any]
    device: str = "auto"
    devices: int = 1
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    fine_tuned_model: str | None = Field(
        None, description="A `finetune` job that succeeded: the id of the model it made (GET /v1/models/{id}), "
                          "a teacher for your next jobs; null otherwise.")
    estimated_finish_at: datetime | None = Field(
        None, description="While the job runs: when it is expected to finish training, from the measured speed of "
                          "jobs like it before its first steps, then from its own steps; null otherwise.")

    # The job's attributes `of` reads: the polled reads select only these (app.reads.row_select).
    READS: ClassVar[tuple[str, ...]] = (
        "id", "status", "name", "created_at", "started_at", "finished_at", "teacher_id", "method", "student",
        "training_dataset_id", "validation_dataset_id", "hyperparameters", "label_map", "export", "meta", "progress",
        "metrics", "error", "attempts", "versions", "queue_kind", "devices", "integrations", "fine_tuned_model_id",
    )

    @classmethod
    def of(cls, row: Job) -> JobOut:
        progress = {k: v for k, v in (row.progress or {}).items() if k in _PROGRESS_FIELDS}
        return cls(
            id=row.id,
            status=row.status,
            name=row.name,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            teacher=row.teacher_id,
            method=row.method,
            student=row.student,
            training_dataset=row.training_dataset_id,
            validation_dataset=row.validation_dataset_id,
            hyperparameters=row.hyperparameters,
            label_map=row.label_map,
            export=row.export or [],
            metadata=row.meta,
            progress=progress,  # type: ignore[arg-type]  # validated into a Progress by this same call
            metrics=job_metrics(row.metrics),
            error=row.error,
            attempts=row.attempts,
            versions={"gkd": None, "torch": None, "transformers": None, **(row.versions or {})},
            device=row.queue_kind or "auto",
            devices=row.devices or 1,
            integrations=row.integrations or [],
            fine_tuned_model=row.fine_tuned_model_id,
            estimated_finish_at=(row.progress or {}).get("estimated_finish_at") if row.status == "running" else None,
        )


class EventOut(BaseModel):
    object: Literal["event"] = "event"
    seq: int
    created_at: datetime
    type: str = Field(..., description="status, phase, metrics, log or checkpoint.")
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, row: JobEvent) -> EventOut:
        return cls(seq=row.seq, created_at=row.created_at, type=row.type, message=row.message, data=row.data)


class CheckpointOut(BaseModel):
    """A trained student as a `.tar.gz` of a Hugging Face model directory."""

    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job: str
    kind: str = Field(description="`best` (best dev accuracy so far), `final` (after the last epoch), `epoch-N` "
                      "(after epoch N, `hyperparameters.n_checkpoints`), or the best student as ONNX: `best-onnx`, "
                      "`best-onnx-int8` (the job's `export`)")
    step: int = Field(description="the optimiser step the weights are from")
    sha256: str = Field(description="of the archive; `best` and `final` share one archive (and this value) "
                                    "when training ended on its best evaluation")
    size_bytes: int
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: Checkpoint) -> CheckpointOut:
        return cls(
            id=row.id,
            job=row.job_id,
            kind=row.kind,
            step=row.step,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            metrics=row.metrics,
            created_at=row.created_at,
        )


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StorableText = Field(..., min_length=1, max_length=MAX_URL_LENGTH,
                              description="http(s) URL the events are POSTed to; its host must be public.")
    event_types: list[EventType] = Field(..., min_length=1, max_length=16,
                                         description="The events to send; each at most once in the list.")
    description: Annotated[StorableText, StringConstraints(max_length=300)] | None = None

    @field_validator("event_types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("event_types must not repeat an event type")
        return value


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    event_types: list[str]
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookOut:
        return cls(id=row.id, url=row.url, event_types=list(row.event_types), description=row.description,
                   created_at=row.created_at)


class WebhookCreated(WebhookOut):
    secret: str = Field(..., description="The signing secret (whsec_...), shown only in this response.")


class WebhookDeliveryOut(BaseModel):
    id: str = Field(..., description="The message id, sent as the webhook-id header (the same on every attempt).")
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int = Field(..., description="Attempts made so far.")
    response_status: int | None = Field(..., description="HTTP status of the last attempt; null: no response.")
    latency_ms: int | None = Field(..., description="Duration of the last attempt.")
    error: str | None = Field(..., description="Why the last attempt failed; null when it succeeded.")
    payload: dict[str, Any]
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(..., description="When the next attempt is due; null when done.")

    @classmethod
    def of(cls, row: WebhookDelivery) -> WebhookDeliveryOut:
        return cls(id=row.id, webhook_id=row.webhook_id, event_type=row.event_type, status=row.status,
                   attempts=row.attempts, response_status=row.response_status, latency_ms=row.latency_ms,
                   error=row.error, payload=row.payload, created_at=row.created_at,
                   last_attempt_at=row.last_attempt_at,
                   next_attempt_at=row.next_attempt_at if row.status == PENDING else None)
