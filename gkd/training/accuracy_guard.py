"""The accuracy guard of the gradient terms (ours, not in the paper): saliency is never bought with accuracy.

The gradient term aligns *which tokens matter*; it says nothing about *which label is right*. Started before the
student has learned the task, it pulls a student that still predicts the majority class towards the teacher's
input gradients, and with few steps or a modest learning rate the student stays there (the README's demo ended at
45 % on a binary task). Started later, it can still trade accuracy for saliency. The guard watches what every
training step already computes, the student's agreement with the teacher's predictions on the batch, and

- **opens** the gradient terms only once the student has learned a real part of the task: its smoothed agreement,
  normalised against the majority-class guess, `(agreement - m) / (1 - m)` with `m` the teacher's majority-class
  share, reaches `OPEN_AT` (never before `gradient_start_ratio`); the usual ramp starts from that step;
- **backs off**: once open, when the normalised agreement falls `BACKOFF_MARGIN` below its best since opening, the
  gradient terms' weight halves (at most once per `COOLDOWN_STEPS`).

Everything it needs comes with the step (no extra forward pass); its state is saved with the run, so a resumed run
continues exactly. `hyperparameters.accuracy_guard: false` gives the fixed schedule of the paper (saliency first).
The constants hold across the task suite (benchmarks/suite); they are not tuned per task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SMOOTHING = 0.95  # per-step factor of the moving average: about the last 20 batches
OPEN_AT = 0.3  # normalised agreement at which the gradient terms start (0.5 opened too late: docs/methods.md)
BACKOFF_MARGIN = 0.15  # fall below the best normalised agreement since opening that halves the weight
BACKOFF_FACTOR = 0.5
COOLDOWN_STEPS = 20  # the average's window: a second halving waits for fresh evidence
MIN_OBSERVED_STEPS = 5  # the average needs a few batches before it may open the gate


def normalised_agreement(agreement: float, majority_share: float) -> float:
    """How much of what the majority-class guess leaves unexplained the student gets right: 0 at the guess, 1 at
    full agreement (1 when the teacher itself only ever predicts one class)."""
    if majority_share >= 1.0:
        return 1.0
    return (agreement - majority_share) / (1.0 - majority_share)


@dataclass
class AccuracyGuard:
    """One run's guard. `observe` after every optimisation step, `weight` before the next."""

    start_step: float  # the earliest step the gradient terms may start (gradient_start_ratio x total steps)
    ramp_steps: float  # steps of the linear ramp to full weight once started (gradient_warmup_ratio x total)
    agreement: float | None = None  # moving average of the student's agreement with the teacher
    teacher_counts: list[float] = field(default_factory=list)  # the teacher's predictions per class so far
    observed: int = 0
    opened_at: int | None = None
    best: float | None = None  # best normalised agreement since opening
    multiplier: float = 1.0
    last_backoff: int | None = None

    @property
    def majority_share(self) -> float:
        total = sum(self.teacher_counts)
        return max(self.teacher_counts) / total if total else 1.0

    @property
    def score(self) -> float | None:
        """The smoothed normalised agreement (None before the first step)."""
        if self.agreement is None:
            return None
        return normalised_agreement(self.agreement, self.majority_share)

    def weight(self, step: int) -> float:
        """The gradient terms' weight factor at `step`: 0 until open, then the ramp times the back-off."""
        if self.opened_at is None or step < self.opened_at:
            return 0.0
        ramp = 1.0 if self.ramp_steps <= 0 else min(1.0, (step - self.opened_at) / self.ramp_steps)
        return ramp * self.multiplier

    def observe(self, step: int, agreement: float, teacher_counts: list[int]) -> None:
        """Record step `step`'s batch agreement and the teacher's predicted classes; open or back off."""
        if len(self.teacher_counts) < len(teacher_counts):
            self.teacher_counts += [0.0] * (len(teacher_counts) - len(self.teacher_counts))
        for label, count in enumerate(teacher_counts):
            self.teacher_counts[label] += count
        self.agreement = agreement if self.agreement is None else (
            SMOOTHING * self.agreement + (1.0 - SMOOTHING) * agreement)
        self.observed += 1
        score = self.score
        assert score is not None
        if self.opened_at is None:
            if step + 1 >= self.start_step and self.observed >= MIN_OBSERVED_STEPS and score >= OPEN_AT:
                self.opened_at, self.best = step + 1, score
            return
        self.best = max(self.best if self.best is not None else score, score)
        cooled = self.last_backoff is None or step - self.last_backoff >= COOLDOWN_STEPS
        if cooled and score < self.best - BACKOFF_MARGIN:
            self.multiplier *= BACKOFF_FACTOR
            self.last_backoff = step
            self.best = score  # the next halving needs a further fall from here

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AccuracyGuard:
        return cls(**state)
