"""The checks of a `method: "finetune"` job body (docs/design.md, "Making a teacher"): the job fine-tunes its
`teacher`, a base encoder or a classifier, at full depth into a new model of the tenant, so the student and
distillation fields do not apply and are refused rather than silently ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.errors import invalid
from app.schemas import JobCreate
from app.store.job_config import check_job_body
from app.store.orm import TeacherModel
from gkd.config import ConfigError, Hyperparameters, StudentSpec
from gkd.training.finetune_settings import (
    FINETUNE_DEFAULTS,
    FINETUNE_HYPERPARAMETERS,
    TRAINED_AS,
    finetune_student,
)


def _changed(model: BaseModel, name: str) -> bool:
    """Whether the body set `name` to something other than its default: a default changes nothing when ignored
    (the dashboard's form sends every field), anything else would be silently dropped."""
    if name not in model.model_fields_set:
        return False
    default = type(model)().model_dump(include={name})  # every job-body model here has defaults throughout
    return model.model_dump(include={name}) != default


def check_finetune_fields(body: JobCreate) -> None:
    """Refuse what a fine-tuning would ignore, and fill the fine-tuning defaults into what the body left out."""
    changed_student = sorted(name for name in StudentSpec.model_fields if _changed(body.student, name))
    if changed_student:
        raise invalid(f"a finetune job trains the teacher model itself at its full depth; leave "
                      f"student.{changed_student[0]} out (`student` applies to distillation jobs only)",
                      param=f"student.{changed_student[0]}")
    if body.export:
        raise invalid("a finetune job makes a teacher model, not a deployable student; leave `export` out",
                      param="export")
    hp = body.hyperparameters
    unused = sorted(name for name in Hyperparameters.model_fields
                    if name not in FINETUNE_HYPERPARAMETERS and _changed(hp, name))
    if unused:
        raise invalid(f"hyperparameters.{unused[0]} weighs a distillation term and does not apply to a finetune "
                      f"job; it uses {', '.join(sorted(FINETUNE_HYPERPARAMETERS))}",
                      param=f"hyperparameters.{unused[0]}")
    for name, value in FINETUNE_DEFAULTS.items():
        # Only where they differ: a field set here counts as the caller's (max_length is then not capped to a
        # shorter model's position table by `_check_max_length`).
        if name not in hp.model_fields_set and getattr(hp, name) != value:
            setattr(hp, name, value)


def finetune_job_student(body: JobCreate, base: TeacherModel, train_labels: list[str],
                         dev_labels: list[str] | None) -> dict[str, Any]:
    """Check the datasets against the fine-tuning and return the student the worker trains (the base model at
    full depth). A bare encoder's new classifier has the training dataset's labels (a dataset has at least two:
    the upload refuses fewer); a classifier keeps its head and labels, which the caller checked the data against
    (`label_map` included), as for a distillation."""
    if not base.labels and body.label_map:
        raise invalid(f"model {base.name} has no classification head: the model a finetune job makes from it has "
                      "the training dataset's own labels; leave `label_map` out", param="label_map")
    if dev_labels is not None and not set(dev_labels) <= set(train_labels):
        raise invalid(f"the validation dataset has labels the training dataset lacks: "
                      f"{sorted(set(dev_labels) - set(train_labels))}", param="validation_dataset",
                      code="labels_mismatch")
    student = finetune_student(base.num_layers)
    try:  # the library's own checks, as the worker will build the config
        check_job_body(TRAINED_AS, student, body.hyperparameters.model_dump(), None, [])
    except ConfigError as exc:
        raise invalid(exc.message, param=exc.param) from exc
    return student
