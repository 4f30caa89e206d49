"""What the suite keeps of a run besides its test figures: loss terms per epoch and every dev evaluation."""

from __future__ import annotations

from typing import Any

from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress

DEV_KEYS = ("accuracy", "macro_f1", "teacher_agreement", "saliency_agreement")


class RunObserver(TrainerCallback):
    """Means of every logged term per epoch (a term is averaged over the steps that logged it) and the dev
    history, so a surprising figure can be traced to its run without training it again."""

    def __init__(self) -> None:
        self.sums: list[dict[str, float]] = []
        self.counts: list[dict[str, int]] = []
        self.dev: list[dict[str, float]] = []
        self.warnings: list[str] = []

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        epoch = min(progress.epoch, progress.num_epochs - 1)
        while len(self.sums) <= epoch:
            self.sums.append({})
            self.counts.append({})
        for name, value in {"loss": metrics.loss, **metrics.terms}.items():
            self.sums[epoch][name] = self.sums[epoch].get(name, 0.0) + value
            self.counts[epoch][name] = self.counts[epoch].get(name, 0) + 1

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        self.dev.append({"step": progress.step, **{k: metrics[k] for k in DEV_KEYS if k in metrics}})

    def on_warning(self, progress: TrainingProgress, code: str, message: str) -> None:
        self.warnings.append(code)

    def summary(self) -> dict[str, Any]:
        terms = [{name: value / counts[name] for name, value in sums.items()}
                 for sums, counts in zip(self.sums, self.counts, strict=True)]
        return {"terms_per_epoch": terms, "dev_history": self.dev, "warnings": self.warnings}
