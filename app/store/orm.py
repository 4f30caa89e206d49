"""Database tables (SQLAlchemy 2 typed models). Request/response shapes live in app/schemas.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The operator's limits for this tenant (migration 0007); NULL: the deployment's default (GKD_QUOTA_*).
    quota_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_datasets: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_models: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_active_jobs: Mapped[int | None] = mapped_column(Integer, default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(24), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    validation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class TeacherModel(Base):
    """A registered teacher: a Hugging Face directory (safetensors) owned by a tenant or global (NULL)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # import | upload | builtin | finetune
    task: Mapped[str | None] = mapped_column(String(64))
    model_type: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[list[Any]] = mapped_column(default=list)
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    # gkd.models.families facts (migration 0003; NULL for rows registered before it)
    family: Mapped[str | None] = mapped_column(String(64))
    num_attention_heads: Mapped[int | None] = mapped_column(Integer)
    max_position_embeddings: Mapped[int | None] = mapped_column(Integer)
    embedding_size: Mapped[int | None] = mapped_column(Integer)
    # Bytes an upload occupies in storage, counted against its tenant's quota (migration 0007; NULL before it).
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft delete (migration 0008): finished jobs keep naming their teacher; the files are gone.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))
    teacher_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    training_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    validation_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    student: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    label_map: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # data label -> teacher label
    # The checkpoint the student continues from (`student.init.checkpoint`, migration 0006); NULL: none.
    init_checkpoint_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    # Deployable copies of the best student to make: "onnx", "onnx-int8" (migration 0005; NULL: none).
    export: Mapped[list[Any] | None] = mapped_column(default=None)
    # Experiment trackers the job logs to, as the tenant asked: [{"type": "mlflow", "experiment": ...}]
    # (migration 0010; NULL: none). The tracking server is the operator's (GKD_MLFLOW_TRACKING_URI).
    integrations: Mapped[list[Any] | None] = mapped_column(default=None)
    # The model a `finetune` job registered when it succeeded (migration 0011; NULL: none). No foreign key: the
    # model may be deleted later and the job keeps saying what it made.
    fine_tuned_model_id: Mapped[str | None] = mapped_column(String(40), default=None)
    name: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    # The worker queue the job goes to: auto|cpu|gpu (the job body's `device`; column `device`, migration 0002).
    queue_kind: Mapped[str] = mapped_column("device", String(8), default="auto", server_default="auto")
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # data-parallel processes
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "kind", name="uq_checkpoints_job_kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # best | final | best-onnx | best-onnx-int8
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """A tenant's webhook endpoint. `secret` is the signing secret encrypted (app.store.webhook_secrets)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str | None] = mapped_column(String(300), default=None)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint (the outbox row, written in the transaction of the event) and its last attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # also the `webhook-id` header
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
class StepCalibration(Base):
    """Measured training speed of one kind of job on one kind of worker (migration 0010): the running mean of
    seconds per optimiser step per training row, so that jobs with other batch sizes share it. Written by workers
    when a job's training ends, read by estimates (`app.store.estimates`)."""

    __tablename__ = "step_calibration"

    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    student_width: Mapped[int] = mapped_column(Integer, primary_key=True)
    student_depth: Mapped[int] = mapped_column(Integer, primary_key=True)
    length_bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # cpu | gpu
    seconds_per_row: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=0)  # jobs averaged into the mean
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
