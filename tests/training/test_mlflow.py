"""The MLflow integration of the library: a tiny real run logs its params, every step's metrics, its evaluations
and the trained student's URI to a local MLflow store; mlflow is imported only when a run asks for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gkd.config import ConfigError, DistillConfig
from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress
from gkd.training.trainer import Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv

pytest.importorskip("mlflow")


class LossRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        self.losses.append(metrics.loss)


def tiny_config(tmp: Path, integrations: list[dict]) -> DistillConfig:
    teacher = make_tiny_teacher(tmp / "teacher")
    return DistillConfig.parse({
        "method": "gradient_kd",
        "teacher": str(teacher),
        "student": {"num_layers": 1},
        "data": {"train": str(write_csv(tmp / "train.csv", sentiment_rows(24))),
                 "dev": str(write_csv(tmp / "dev.csv", sentiment_rows(8, seed=1)))},
        "hyperparameters": {"epochs": 2, "batch_size": 8, "max_length": 16},
        "output_dir": str(tmp / "run"), "cache_dir": str(tmp / "cache"), "device": "cpu",
        "integrations": integrations,
    })


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_a_run_logs_params_step_metrics_and_the_student_uri(tmp_path: Path, store: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    if store == "file":  # MLflow 3 keeps the file store only on request
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, [{"type": "mlflow", "tracking_uri": uri, "experiment": "tiny-sst",
                                     "run_name": "first", "tags": {"team": "nlp"}}])
    seen = LossRecorder()
    result = Trainer(config, [seen]).train()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-sst")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    params = run.data.params
    assert params["method"] == "gradient_kd" and params["student.num_layers"] == "1"
    assert params["hyperparameters.batch_size"] == "8" and params["hyperparameters.epochs"] == "2"
    assert not any(str(tmp_path) in value for value in params.values())  # no local paths
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, result.steps + 1)) == list(range(1, 7))
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(seen.losses)
    evaluations = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [m.step for m in evaluations] == [3, 6]  # one per epoch
    assert run.data.tags["team"] == "nlp" and run.data.tags["gkd.method"] == "gradient_kd"
    assert run.data.tags["gkd.final_artifact_uri"] == Path(result.final_dir).resolve().as_uri()


def test_artifact_base_uri_names_the_student_in_the_service(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, [{"type": "mlflow", "tracking_uri": uri, "experiment": "e",
                                     "artifact_base_uri": "gkd://jobs/job_1/checkpoints/"}])
    config = config.model_copy(update={"hyperparameters": config.hyperparameters.model_copy(update={"epochs": 1})})
    Trainer(config).train()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.data.tags["gkd.final_artifact_uri"] == "gkd://jobs/job_1/checkpoints/final"
    assert run.data.tags["gkd.best_artifact_uri"] == "gkd://jobs/job_1/checkpoints/best"


def test_integrations_are_checked() -> None:
    base = {"teacher": "t", "data": {"train": "x.csv"}}
    with pytest.raises(ConfigError) as bad_type:
        DistillConfig.parse({**base, "integrations": [{"type": "wandb"}]})
    assert bad_type.value.param.startswith("integrations.0")
    with pytest.raises(ConfigError):
        DistillConfig.parse({**base, "integrations": [{"type": "mlflow", "experiment": ""}]})


def test_the_library_imports_no_mlflow_unless_a_run_asks() -> None:
    code = ("import sys; from gkd.training.trainer import Trainer; from gkd.config import DistillConfig; "
            "from gkd.training.integrations import integration_callbacks; "
            "c = DistillConfig.parse({'teacher': 't', 'data': {'train': 'x'}}); "
            "assert integration_callbacks(c) == []; assert 'mlflow' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_missing_mlflow_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    config = DistillConfig.parse({"teacher": "t", "data": {"train": "x"},
                                  "integrations": [{"type": "mlflow", "experiment": "e"}]})
    with pytest.raises(ConfigError, match="pip install mlflow-skinny"):
        Trainer(config)


def test_an_unreachable_tracker_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    config = tiny_config(tmp_path, [{"type": "mlflow", "tracking_uri": "http://127.0.0.1:9", "experiment": "e"}])
    config = config.model_copy(update={"hyperparameters": config.hyperparameters.model_copy(update={"epochs": 1})})
    result = Trainer(config).train()
    assert result.steps == 3 and result.final_dir is not None
    assert "MLflow logging stopped for this run" in caplog.text
