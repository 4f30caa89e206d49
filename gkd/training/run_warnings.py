"""What a finished run must say out loud: a student near the majority-class guess, a gradient term that never ran.

A job that ends `succeeded` with a student no better than predicting the most common label is a failure the user
must hear about; so is a `gradient_kd` run whose accuracy guard never opened the gradient term (too few steps for
the student to learn the task first), which trained as plain `kd`. The trainer hands these to
`TrainerCallback.on_warning` and to `TrainResult.warnings`; the service turns them into `warning` events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# A student that recovers less than this share of the teacher's gain over the majority-class guess is "near chance".
NEAR_CHANCE_SHARE = 0.25
# ... and only when the teacher's gain itself is real (accuracy points over the guess).
MIN_TEACHER_GAIN = 0.05


@dataclass(frozen=True)
class RunWarning:
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def majority_share(labels: Sequence[int]) -> float:
    """The accuracy of always predicting the most common label."""
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


def near_chance(student_accuracy: float, teacher_accuracy: float | None, majority: float) -> RunWarning | None:
    """A warning when the student is near the majority-class guess while the teacher is well above it."""
    if teacher_accuracy is None or teacher_accuracy - majority < MIN_TEACHER_GAIN:
        return None
    recovered = (student_accuracy - majority) / (teacher_accuracy - majority)
    if recovered >= NEAR_CHANCE_SHARE:
        return None
    return RunWarning(
        "student_near_chance",
        f"the student's best dev accuracy {student_accuracy:.1%} is near the majority-class guess ({majority:.1%}) "
        f"while the teacher reaches {teacher_accuracy:.1%}: train more steps (epochs or rows) or raise the "
        f"learning rate; the checkpoint is unlikely to be useful",
    )


def gradient_term_idle(steps: int) -> RunWarning:
    return RunWarning(
        "gradient_term_not_started",
        f"the gradient term never started: in {steps} steps the student did not agree with the teacher enough for "
        f"the accuracy guard to open it, so this run trained as kd; train more steps to get saliency alignment",
    )
