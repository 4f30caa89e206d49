"""Hooks the training loop calls; logging, progress, cancellation and checkpoint upload live here,
not as branches in the loop (the transformers Trainer callback idea).

A callback subclasses `TrainerCallback` and overrides what it needs. Every hook receives a
`TrainingProgress` snapshot, which is plain data and safe to serialise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# "best", "final", "state" (the resumable training state), "epoch-N" (`hyperparameters.n_checkpoints`) or the
# deployable copies of the best student, "best-onnx" and "best-onnx-int8" (the run's `export`).
CheckpointKind = str


def epoch_kind(epoch: int) -> str:
    """The kind of the checkpoint exported after epoch `epoch` (1-based)."""
    return f"epoch-{epoch}"


# What a run is doing, in order; `packing` and `uploading` are the service's (the worker's checkpoint archives).
Phase = Literal["validating", "loading_teacher", "teacher_cache", "training", "evaluating", "packing", "uploading"]
PHASES: tuple[Phase, ...] = ("validating", "loading_teacher", "teacher_cache", "training", "evaluating", "packing",
                             "uploading")
PHASE_TITLES: dict[str, str] = {
    "validating": "validating the data",
    "loading_teacher": "loading the teacher",
    "teacher_cache": "building the teacher cache",
    "training": "training",
    "evaluating": "evaluating",
    "packing": "packing a checkpoint",
    "uploading": "uploading checkpoints",
}


@dataclass(frozen=True)
class PhaseProgress:
    """How far one phase of a run is: `done` of `total` `unit`s (total None: not known yet), so a long wait before
    the first step (the teacher cache) shows progress and an ETA instead of silence."""

    phase: Phase
    done: int
    total: int | None
    elapsed_seconds: float
    unit: str = ""
    detail: str = ""  # which part, e.g. the split a cache is built for

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    @property
    def eta_seconds(self) -> float | None:
        """Linear extrapolation over this phase's units (None until one is done or when the total is unknown)."""
        if self.total is None or self.done <= 0:
            return None
        return max(0.0, self.elapsed_seconds / self.done * (self.total - self.done))

    @property
    def title(self) -> str:
        title = PHASE_TITLES.get(self.phase, self.phase)
        return f"{title} ({self.detail})" if self.detail else title

    def describe(self) -> str:
        """One line for a log or an event: 'building the teacher cache (train): 120/375 batches, about 40 s left'."""
        text = self.title
        if self.total is not None:
            text += f": {self.done}/{self.total} {self.unit}".rstrip()
        eta = self.eta_seconds
        if eta is not None and not self.finished:
            text += f", about {eta:.0f} s left"
        return text

    def as_dict(self) -> dict[str, Any]:
        fraction, eta = self.fraction, self.eta_seconds
        return {"phase": self.phase, "detail": self.detail, "done": self.done, "total": self.total, "unit": self.unit,
                "fraction": None if fraction is None else round(fraction, 6),
                "elapsed_seconds": round(self.elapsed_seconds, 1),
                "eta_seconds": None if eta is None else round(eta, 1)}


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

    def on_phase(self, progress: PhaseProgress) -> None:
        """Where the run is outside the training steps: validating the data, loading the teacher, building the
        teacher cache (per batch), evaluating; called when a phase starts, as it advances and when it ends."""

    def on_train_begin(self, progress: TrainingProgress) -> None:
        """Called once, after a resume has been applied."""

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        """Called after every optimiser step."""

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        """Called after each evaluation on the dev split with accuracy, macro_f1, agreements."""

    def on_log(self, progress: TrainingProgress, message: str, data: dict[str, Any]) -> None:
        """Called when the run decides something worth a line in its log (e.g. the beta `"auto"` chose), with
        JSON-safe `data`."""

    def on_warning(self, progress: TrainingProgress, code: str, message: str) -> None:
        """Called when the run finds something the user must hear about (`gkd.training.run_warnings`)."""

    def before_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind) -> None:
        """Called before a checkpoint directory or the training state is written; raising stops the run with
        nothing written (a service worker that lost its claim on the job must not overwrite the new holder's)."""

    def on_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind, path: Path) -> None:
        """Called after a checkpoint directory (`best`/`final`/`epoch-N` exports) or the training state is written."""

    def should_stop(self, progress: TrainingProgress) -> bool:
        """Return True to stop training at the next step boundary (cancellation)."""
        return False

    def on_train_end(self, progress: TrainingProgress, stopped: bool) -> None:
        """Called once at the end; `stopped` says whether a callback asked to stop."""


def phase_reporter(callbacks: Sequence[TrainerCallback], phase: Phase, unit: str = "",
                   detail: str = "") -> Callable[[int, int | None], None]:
    """A `report(done, total)` that tells every callback how far `phase` is, timed from this call."""
    started = time.perf_counter()

    def report(done: int, total: int | None) -> None:
        progress = PhaseProgress(phase, done, total, time.perf_counter() - started, unit, detail)
        for callback in callbacks:
            callback.on_phase(progress)

    return report
