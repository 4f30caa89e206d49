"""What a library run leaves in its output directory besides the checkpoints: `steps.jsonl` (one line per
optimiser step: loss terms, learning rate, progress) and `metrics.json` (every evaluation, then the best, the
test figures and the teacher's). A 13-minute `gkd distill` can be followed with `tail -f` and read afterwards by
a script, with or without `--json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress

STEPS_FILE = "steps.jsonl"
METRICS_FILE = "metrics.json"


def _write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class RunLog(TrainerCallback):
    """Appends each step to `steps.jsonl` and keeps `metrics.json` current. A resumed run first drops the steps
    past the one it resumes from (they are trained again), so every step appears once."""

    def __init__(self, output_dir: str | Path) -> None:
        self.directory = Path(output_dir)
        self.evaluations: list[dict[str, Any]] = []

    @property
    def steps_path(self) -> Path:
        return self.directory / STEPS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.directory / METRICS_FILE

    def on_train_begin(self, progress: TrainingProgress) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        kept = [line for line in self._lines(self.steps_path) if line.get("step", 0) <= progress.step]
        self.steps_path.write_text("".join(json.dumps(line) + "\n" for line in kept), encoding="utf-8")
        previous = self._metrics()
        self.evaluations = [e for e in previous.get("evaluations", []) if e.get("step", 0) <= progress.step]

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        line = {"step": progress.step, "total_steps": progress.total_steps, "epoch": progress.epoch,
                "elapsed_seconds": round(progress.elapsed_seconds, 3), **metrics.as_dict()}
        with self.steps_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        self.evaluations.append({"step": progress.step, "epoch": progress.epoch, **metrics})
        _write_json_atomic(self.metrics_path, {"evaluations": self.evaluations})

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's outcome (best, test and teacher figures, checkpoint paths) beside every evaluation."""
        _write_json_atomic(self.metrics_path, {"evaluations": self.evaluations, **summary})

    def _metrics(self) -> dict[str, Any]:
        try:
            data = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _lines(path: Path) -> list[dict[str, Any]]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return []
        lines = []
        for raw in text.splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a line cut short by a crash
        return lines
