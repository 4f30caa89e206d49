"""Hooks the training loop calls; logging, progress, cancellation and checkpoint upload live here,
not as branches in the loop (the transformers Trainer callback idea).

A callback subclasses `TrainerCallback` and overrides what it needs. Every hook receives a
`TrainingProgress` snapshot, which is plain data and safe to serialise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

CheckpointKind = Literal["best", "final", "state"]


@dataclass(frozen=True)
class TrainingProgress:
    """Where the loop stands: `step` counts optimiser steps done, `total_steps` is the planned total."""

    step: int
    total_steps: int
    epoch: int
    num_epochs: int
    elapsed_seconds: float
    resumed_from_step: int = 0

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Linear extrapolation from the steps done in this process (not those before a resume)."""
        done_here = self.step - self.resumed_from_step
        if done_here <= 0 or self.total_steps <= self.step:
            return None if self.total_steps > self.step else 0.0
        return self.elapsed_seconds / done_here * (self.total_steps - self.step)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fraction"] = round(self.fraction, 6)
        eta = self.eta_seconds
        data["eta_seconds"] = None if eta is None else round(eta, 1)
        return data


@dataclass(frozen=True)
class StepMetrics:
    """Loss terms of one optimiser step (means over its micro-batches)."""

    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    learning_rate: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, **self.terms, "lr": self.learning_rate}


class TrainerCallback:
    """No-op base class; override the hooks you need."""

    def on_prepare(self, stage: str, done: int, total: int) -> None:
        """Progress of preparation work before training, e.g. stage 'teacher_cache:train' in batches."""

    def on_train_begin(self, progress: TrainingProgress) -> None:
        """Called once, after a resume has been applied."""

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        """Called after every optimiser step."""

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        """Called after each evaluation on the dev split with accuracy, macro_f1, agreements."""

    def before_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind) -> None:
        """Called before a checkpoint directory or the training state is written; raising stops the run with
        nothing written (a service worker that lost its claim on the job must not overwrite the new holder's)."""

    def on_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind, path: Path) -> None:
        """Called after a checkpoint directory (`best`/`final` exports) or the training state is written."""

    def should_stop(self, progress: TrainingProgress) -> bool:
        """Return True to stop training at the next step boundary (cancellation)."""
        return False

    def on_train_end(self, progress: TrainingProgress, stopped: bool) -> None:
        """Called once at the end; `stopped` says whether a callback asked to stop."""
