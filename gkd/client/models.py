"""Typed results. Every model allows unknown fields (`extra="allow"`), so a newer service that adds
fields does not break an older client; the extra fields are kept and show up in `model_dump()`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

T = TypeVar("T")


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DatasetValidation(_Resource):
    rows: int = 0
    labels: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    label_counts: dict[str, int] = Field(default_factory=dict)
    empty_rows: int = 0
    duplicate_rows: int = 0
    over_max_length: int = 0


class Dataset(_Resource):
    id: str
    object: str = "dataset"
    name: str | None = None
    format: str | None = None
    rows: int | None = None
    labels: list[str] = Field(default_factory=list)
    sha256: str | None = None
    size_bytes: int | None = None
    validation: DatasetValidation = Field(default_factory=DatasetValidation)
    created_at: datetime | None = None


class Model(_Resource):
    id: str
    object: str = "model"
    name: str | None = None
    owner: str | None = None
    source: str | None = None
    task: str | None = None
    model_type: str | None = None
    labels: list[str] = Field(default_factory=list)
    num_layers: int | None = None
    hidden_size: int | None = None
    num_parameters: int | None = None
    vocab_size: int | None = None
    family: str | None = None
    num_heads: int | None = None
    max_positions: int | None = None
    embedding_size: int | None = None
    created_at: datetime | None = None


class JobPhase(_Resource):
    """What the job is doing now, with the phase's own progress (validating, teacher_cache, training, ...)."""

    phase: str
    detail: str = ""
    done: int = 0
    total: int | None = None
    unit: str = ""
    fraction: float | None = None
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None


class JobProgress(_Resource):
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None
    phase: JobPhase | None = None


class Job(_Resource):
    id: str
    object: str = "job"
    status: str
    name: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    teacher: str | None = None
    method: str | None = None
    student: dict[str, Any] = Field(default_factory=dict)
    training_dataset: str | None = None
    validation_dataset: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    label_map: dict[str, str] | None = None
    export: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    versions: dict[str, Any] = Field(default_factory=dict)
    device: str = "auto"
    estimated_finish_at: datetime | None = None  # while running: when training is expected to end
    fine_tuned_model: str | None = None  # a `finetune` job that succeeded: the model id of the teacher it made

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobEstimate(_Resource):
    """`jobs.estimate(...)`: a job's size and duration before it is submitted; nothing is stored."""

    object: str = "job.estimate"
    total_steps: int
    steps_per_epoch: int = 0
    teacher_cache_exists: bool = False
    estimated_seconds: dict[str, float] = Field(default_factory=dict)  # per worker kind: cpu, gpu
    seconds_per_step: dict[str, float] = Field(default_factory=dict)
    basis: dict[str, str] = Field(default_factory=dict)  # per worker kind: measured | default (a rough formula)


class JobEvent(_Resource):
    object: str = "event"
    seq: int
    created_at: datetime | None = None
    type: str
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """A status event that moves the job to a final state: the last event of its stream."""
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES


class Checkpoint(_Resource):
    id: str
    object: str = "checkpoint"
    job: str | None = None
    kind: str | None = None
    step: int | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class Deleted(_Resource):
    id: str
    object: str
    deleted: bool = True


class Page(_Resource, Generic[T]):
    """One page of a list endpoint."""

    object: str = "list"
    data: list[T]
    has_more: bool = False
    next_cursor: str | None = None


class Webhook(_Resource):
    """A webhook endpoint. `secret` (whsec_...) is set only on the result of `webhooks.create`: keep it, the service
    never shows it again."""

    id: str
    object: str = "webhook"
    url: str
    event_types: list[str] = Field(default_factory=list)
    description: str | None = None
    created_at: datetime | None = None
    secret: str | None = None


class WebhookDelivery(_Resource):
    """One event sent (or being sent) to an endpoint, with its last attempt. `id` is the webhook-id header."""

    id: str
    object: str = "webhook.delivery"
    webhook_id: str
    event_type: str
    status: str  # pending | succeeded | failed
    attempts: int = 0
    response_status: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
