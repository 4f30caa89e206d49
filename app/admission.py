"""Admission control of `POST /v1/jobs`: a job the worker cannot run is refused with a 422 saying what fits, instead
of failing after minutes of set-up (issue 20 finding 7). Two checks against the deployment's settings: `devices`
against the queue's capacity, and the estimated memory of one training process (`gkd.training.memory_estimate`)
against the worker's budget. The body's `max_length` is already capped at the models' position limit."""

from __future__ import annotations

from typing import Any

from app.errors import invalid
from app.schemas import JobCreate
from app.store.orm import TeacherModel
from app.store.settings import Settings
from gkd.method.properties import method_properties
from gkd.models.shapes import student_heads
from gkd.training.finetune_settings import FINETUNE, TRAINED_AS
from gkd.training.memory_estimate import (
    EVAL_BATCH_SIZE,
    EncoderShape,
    JobShape,
    MemoryEstimate,
    estimate_job_memory,
    gib,
    with_inferred_ffn,
)

DEFAULT_POSITIONS = 512
"""Position table of a model registered before its limit was stored (migration 0003)."""


def queue_kind(body: JobCreate, settings: Settings) -> str:
    """The worker queue the job goes to: `cpu` or `gpu` (`auto` is the deployment's GKD_AUTO_DEVICE)."""
    return settings.auto_device if body.device == "auto" else body.device


def check_devices(body: JobCreate, settings: Settings) -> None:
    """`devices` no larger than what one worker of the job's queue gives a job (GKD_WORKER_DEVICES,
    GKD_GPU_WORKER_DEVICES)."""
    kind = queue_kind(body, settings)
    capacity = settings.gpu_worker_devices if kind == "gpu" else settings.worker_devices
    if body.devices > capacity:
        setting = "GKD_GPU_WORKER_DEVICES" if kind == "gpu" else "GKD_WORKER_DEVICES"
        raise invalid(f"devices {body.devices} is more than a {kind} worker of this deployment runs for one job "
                      f"({capacity}, {setting}); use devices <= {capacity}", param="devices",
                      code="exceeds_worker_capacity")


def model_shape(model: TeacherModel) -> EncoderShape:
    """A registered model's shape from its stored facts; the FFN width is the one its parameter count implies."""
    hidden = model.hidden_size
    return with_inferred_ffn(EncoderShape(
        layers=model.num_layers,
        hidden=hidden,
        heads=model.num_attention_heads or max(1, hidden // 64),
        vocab=model.vocab_size or 0,
        positions=model.max_position_embeddings or DEFAULT_POSITIONS,
        embedding=model.embedding_size or hidden,
        labels=len(model.labels),
    ), model.num_parameters)


def _resized(shape: EncoderShape, layers: int, hidden: int) -> EncoderShape:
    """The student of another width `gkd.models.families.resize` builds: the largest head count <= the teacher's
    dividing it, a 4 x hidden FFN; narrower input embeddings (ALBERT) keep their width."""
    if hidden == shape.hidden:
        return EncoderShape(layers, shape.hidden, shape.heads, shape.vocab, shape.positions, shape.embedding,
                            shape.labels, shape.intermediate)
    heads = student_heads(hidden, shape.heads)
    embedding = shape.embedding if shape.embedding != shape.hidden else hidden
    return EncoderShape(layers, hidden, heads, shape.vocab, shape.positions, embedding, shape.labels)


def student_shape(body: JobCreate, teacher: TeacherModel, base: TeacherModel | None,
                  continued_student: dict[str, Any] | None) -> EncoderShape:
    """The student the worker will build: cut from `base` (init.model) or the teacher, at its width; a finetune
    job trains the base model (its `teacher`) at full depth."""
    if body.method == FINETUNE:
        return _resized(model_shape(teacher), teacher.num_layers, teacher.hidden_size)
    layers = body.student.num_layers
    if base is not None:
        return _resized(model_shape(base), layers, base.hidden_size)
    source = continued_student if continued_student is not None else body.student.model_dump()
    width = source.get("hidden_size") or teacher.hidden_size
    return _resized(model_shape(teacher), layers, int(width))


def job_estimate(body: JobCreate, teacher: TeacherModel, base: TeacherModel | None = None,
                 continued_student: dict[str, Any] | None = None) -> MemoryEstimate:
    """The memory estimate of one training process of the job."""
    return estimate_job_memory(JobShape(
        teacher=model_shape(teacher),
        student=student_shape(body, teacher, base, continued_student),
        batch_size=body.hyperparameters.batch_size,
        max_length=body.hyperparameters.max_length,
        input_gradients=method_properties(TRAINED_AS if body.method == FINETUNE else body.method).input_gradients,
        embeddings_trainable=body.student.embeddings == "trainable",
        teacher_parameters=teacher.num_parameters,
    ))


def check_memory(body: JobCreate, settings: Settings, teacher: TeacherModel, base: TeacherModel | None = None,
                 continued_student: dict[str, Any] | None = None) -> None:
    """Refuse a job whose estimated peak exceeds the worker's budget, naming the largest batch size that fits or,
    when none does, that the models themselves are too big."""
    kind = queue_kind(body, settings)
    budget = (settings.gpu_worker_memory_bytes or settings.worker_memory_bytes) if kind == "gpu" \
        else settings.worker_memory_bytes
    estimate = job_estimate(body, teacher, base, continued_student)
    batch = body.hyperparameters.batch_size
    peak = estimate.peak(batch)
    if peak <= budget:
        return
    setting = "GKD_GPU_WORKER_MEMORY_BYTES" if kind == "gpu" and settings.gpu_worker_memory_bytes \
        else "GKD_WORKER_MEMORY_BYTES"
    head = (f"this job needs about {gib(peak)} per training process and a {kind} worker has {gib(budget)} "
            f"({setting})")
    largest = estimate.largest_batch(budget)
    if largest >= 1:
        raise invalid(f"{head}: teacher {gib(estimate.teacher_weights)}, student with optimiser state "
                      f"{gib(estimate.student_weights + estimate.optimiser)}, activations "
                      f"{gib(batch * estimate.per_example)} at batch_size {batch} and max_length "
                      f"{body.hyperparameters.max_length}. The largest batch_size that fits is {largest} (keep the "
                      f"effective batch with gradient_accumulation_steps), or shorten max_length",
                      param="hyperparameters.batch_size", code="exceeds_worker_memory")
    if estimate.teacher_stage > budget:
        raise invalid(f"{head}: the teacher {teacher.name} alone needs {gib(estimate.teacher_stage)} to load and "
                      f"build its cache at max_length {body.hyperparameters.max_length}; choose a smaller teacher "
                      f"or a shorter max_length", param="teacher", code="exceeds_worker_memory")
    if estimate.fixed > budget:
        raise invalid(f"{head}: the teacher and the student with its optimiser state need {gib(estimate.fixed)} "
                      f"before a single example; choose a smaller student (num_layers, hidden_size)",
                      param="student", code="exceeds_worker_memory")
    raise invalid(f"{head}: at max_length {body.hyperparameters.max_length} one training example needs "
                  f"{gib(estimate.per_example)} and an evaluation batch ({EVAL_BATCH_SIZE} examples) "
                  f"{gib(estimate.evaluation)} of activations beyond the models' {gib(estimate.fixed)}; not even "
                  f"batch_size 1 fits, shorten max_length", param="hyperparameters.max_length",
                  code="exceeds_worker_memory")
