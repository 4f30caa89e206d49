"""MLflow tracking: a run's settings as params, every step's and evaluation's metrics, and the URI of the trained
student (tags `gkd.best_artifact_uri`, `gkd.final_artifact_uri`).

Talks to MLflow through one `MlflowClient` bound to the entry's tracking URI (never the process-wide
`mlflow.set_tracking_uri`), so two runs in one process log to their own servers. `mlflow` is imported when the
callback is made, with a message naming the package to install when it is missing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gkd.config import ConfigError, DistillConfig, MlflowIntegration
from gkd.training.callbacks import CheckpointKind, StepMetrics, TrainerCallback, TrainingProgress
from gkd.training.integrations.artifacts import ArtifactUri

log = logging.getLogger(__name__)

# MLflow's own limits on one log_batch call (metrics and params per request, characters of a param value).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


def run_params(config: DistillConfig) -> dict[str, str]:
    """What a run trains with, flattened (`student.num_layers`, `hyperparameters.alpha`...). Paths on the training
    machine (teacher, data, output) are left out: they mean nothing to whoever reads the tracker."""
    params: dict[str, str] = {"method": config.method, "export": ",".join(config.export)}
    for section in ("student", "hyperparameters"):
        for key, value in getattr(config, section).model_dump(mode="json").items():
            params[f"{section}.{key}"] = str(value)[:MAX_PARAM_CHARS]
    if config.data.label_map:
        params["data.label_map"] = str(config.data.label_map)[:MAX_PARAM_CHARS]
    return params


def _import_mlflow() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError("the mlflow integration needs MLflow where the run trains: pip install mlflow-skinny",
                          "integrations") from exc
    return MlflowClient


def _best_effort(hook: Callable[..., None]) -> Callable[..., None]:
    """A tracker that fails (server down, refused) must not fail the training it watches: the error is logged
    once and the callback stops logging for the rest of the run."""

    @functools.wraps(hook)
    def guarded(self: MlflowCallback, *args: Any) -> None:
        if self.broken:
            return
        try:
            hook(self, *args)
        except Exception:  # noqa: BLE001 - any tracker error; the run goes on without it
            self.broken = True
            log.warning("MLflow logging stopped for this run (%s, experiment %r)", self.entry.tracking_uri,
                        self.entry.experiment, exc_info=True)

    return guarded


class MlflowCallback(TrainerCallback):
    """Logs one training run to MLflow. Step metrics are sent in batches every `flush_every_steps` steps (and at
    each evaluation and the end), each with its own step number, so a slow tracker costs few requests. Tracker
    errors never fail the run (`_best_effort`); a missing mlflow package does, before training starts."""

    def __init__(self, config: DistillConfig, entry: MlflowIntegration, *, artifact_uri: ArtifactUri,
                 flush_every_steps: int = 20) -> None:
        client_class = _import_mlflow()
        self.client = client_class(tracking_uri=entry.tracking_uri) if entry.tracking_uri else client_class()
        self.config, self.entry = config, entry
        self.artifact_uri = artifact_uri
        self.tags = dict(entry.tags)
        self.flush_every_steps = flush_every_steps
        self.run_id: str | None = None
        self.pending: list[Any] = []  # mlflow Metric entities not sent yet
        self.broken = False  # set by the first failed call to the tracker (`_best_effort`)

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.entry.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        return str(self.client.create_experiment(self.entry.experiment))

    @_best_effort
    def on_train_begin(self, progress: TrainingProgress) -> None:
        from mlflow.entities import Param

        tags = {"gkd.method": self.config.method, **self.tags}
        if progress.resumed_from_step:
            tags["gkd.resumed_from_step"] = str(progress.resumed_from_step)
        run = self.client.create_run(self._experiment_id(), run_name=self.entry.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(key, value) for key, value in run_params(self.config).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])

    def _add(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in values.items()
                         if isinstance(value, int | float) and value == value]  # NaN is no value

    def _flush(self) -> None:
        if self.run_id is None or not self.pending:
            return
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start:start + MAX_METRICS_PER_BATCH])

    @_best_effort
    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        self._add({**metrics.as_dict(), "epoch": progress.epoch}, progress.step)
        if progress.step % self.flush_every_steps == 0:
            self._flush()

    @_best_effort
    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        self._add({f"eval_{key}": value for key, value in metrics.items()}, progress.step)
        self._flush()

    @_best_effort
    def on_checkpoint(self, progress: TrainingProgress, kind: CheckpointKind, path: Path) -> None:
        if self.run_id is not None and kind in ("best", "final"):
            self.client.set_tag(self.run_id, f"gkd.{kind}_artifact_uri", self.artifact_uri(kind, Path(path)))

    @_best_effort
    def on_train_end(self, progress: TrainingProgress, stopped: bool) -> None:
        if self.run_id is None:
            return
        self._flush()
        self.client.set_terminated(self.run_id, status="KILLED" if stopped else "FINISHED")
