"""Terminal progress for `gkd distill` and `gkd example-teacher`: a bar with the latest loss and ETA,
and one table row per evaluation."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from gkd.training.callbacks import CheckpointKind, PhaseProgress, StepMetrics, TrainerCallback, TrainingProgress

COLUMNS = ("epoch", "step", "accuracy", "macro_f1", "teacher_agreement", "saliency_agreement")


class ProgressPrinter(TrainerCallback):
    """`quiet`: nothing at all. `to_stderr`: the bar and the evaluation rows go to stderr (the bar always does),
    so stdout can carry machine-readable output."""

    def __init__(self, quiet: bool = False, to_stderr: bool = False) -> None:
        self.quiet = quiet
        self.to_stderr = to_stderr
        self.bar: tqdm | None = None  # the training steps
        self.phase_bar: tqdm | None = None  # a phase before (or after) the steps
        self.phase_title = ""
        self.started = time.perf_counter()
        self.header_done = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def on_phase(self, progress: PhaseProgress) -> None:
        """A bar per phase before training (reading, the teacher, the teacher cache's batches), so a long wait shows
        progress and an ETA; during training the step bar stays and evaluations show as their table rows."""
        if self.quiet or self.bar is not None or progress.phase == "training":
            return
        bar = self.phase_bar
        if bar is None or self.phase_title != progress.title:  # (a disabled tqdm has no `desc`)
            if bar is not None:
                bar.close()
            bar = self.phase_bar = tqdm(total=progress.total, desc=progress.title, unit=progress.unit or "it",
                                        dynamic_ncols=True, leave=False)
            self.phase_title = progress.title
        if progress.total is not None and bar.total != progress.total:
            bar.total = progress.total
        bar.update(progress.done - bar.n)
        if progress.finished:
            bar.close()
            self.phase_bar = None

    def on_train_begin(self, progress: TrainingProgress) -> None:
        self.started = time.perf_counter()
        if self.phase_bar is not None:
            self.phase_bar.close()
            self.phase_bar = None
        if self.quiet:
            return
        if progress.step:
            click.echo(f"resuming at step {progress.step}/{progress.total_steps} (epoch {progress.epoch + 1})",
                       err=self.to_stderr)
        self.bar = tqdm(total=progress.total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
                        leave=False)

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        if self.bar is None:
            return
        self.bar.update(progress.step - self.bar.n)
        terms = {k: f"{v:.3f}" for k, v in metrics.terms.items()}
        self.bar.set_postfix(loss=f"{metrics.loss:.4f}", **terms, refresh=False)

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        if self.quiet:
            return
        row = {"epoch": progress.epoch, "step": progress.step, **metrics}
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in COLUMNS]
        lines = []
        if not self.header_done:
            lines.append("  ".join(f"{c:>18}" for c in COLUMNS))
            self.header_done = True
        lines.append("  ".join(f"{c:>18}" for c in cells))
        for line in lines:
            self._write(line)

    def on_log(self, progress: TrainingProgress, message: str, data: dict[str, Any]) -> None:
        if not self.quiet:
            self._write(f"  {message}")

    def on_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind, path: Path) -> None:
        if self.bar is not None and kind != "state":
            self._write(f"  saved {kind} checkpoint to {path}")

    def _write(self, line: str) -> None:
        """A line above the bar (tqdm.write keeps the bar intact), on stderr with `to_stderr`."""
        stream = sys.stderr if self.to_stderr else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            click.echo(line, err=self.to_stderr)

    def on_train_end(self, progress: TrainingProgress, stopped: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, summary: dict[str, Any]) -> None:
        def pct(metrics: dict[str, Any] | None, key: str = "accuracy") -> str:
            value = (metrics or {}).get(key)
            return "-" if value is None else f"{100 * value:.2f} %"

        click.echo(f"\n{summary['method']} student ({summary['student_layers']} layers), "
                   f"{summary['steps']} steps in {summary['seconds']} s")
        if summary.get("teacher_dev"):  # absent when the teacher was a bare encoder (fine-tuning)
            click.echo(f"  teacher dev accuracy   {pct(summary['teacher_dev'])}")
        click.echo(f"  student dev accuracy   {pct(summary['student_best_dev'])} (best epoch)")
        saliency = summary["student_best_dev"].get("saliency_agreement", float("nan"))
        click.echo(f"  saliency agreement     {saliency:.4f}")
        if summary.get("student_test"):
            click.echo(f"  student test accuracy  {pct(summary['student_test'])}")
        click.echo(f"  best checkpoint        {summary['best_dir']}")
