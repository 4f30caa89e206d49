"""Data-parallel training (`gkd.training.parallel`): two gloo processes on the CPU end with the same weights as one
process trained on the same global batches, double backprop included; a stop on rank 0 stops every rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from gkd.config import DistillConfig
from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress
from gkd.training.parallel import train_distributed
from gkd.training.trainer import STATE_FILE, Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv

pytestmark = pytest.mark.slow


class Losses(TrainerCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at = stop_at

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        self.losses.append(metrics.loss)

    def should_stop(self, progress: TrainingProgress) -> bool:
        return progress.step == self.stop_at


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return {
        "root": root,
        "teacher": make_tiny_teacher(root / "teacher", num_layers=2),
        "train": write_csv(root / "train.csv", sentiment_rows(36, seed=0)),
        "dev": write_csv(root / "dev.csv", sentiment_rows(8, seed=1)),
    }


def config_for(setup: dict[str, Path], name: str, method: str, **hp: Any) -> DistillConfig:
    return DistillConfig.parse({
        "method": method,
        "teacher": str(setup["teacher"]),
        "student": {"num_layers": 1, "dropout": 0.0},
        "data": {"train": str(setup["train"]), "dev": str(setup["dev"])},
        "hyperparameters": {"epochs": 2, "batch_size": 6, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                            "max_length": 24, "beta": 1.0, "seed": 5, "length_bucketing": False, **hp},
        "output_dir": str(setup["root"] / name),
        "cache_dir": str(setup["root"] / "cache"),
        "device": "cpu",
        "num_threads": 1,
    })


def weights(config: DistillConfig) -> dict[str, torch.Tensor]:
    return load_file(str(Path(config.run.output_dir) / "final" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.parametrize(
    ("method", "accumulation"),
    [("gradient_kd", 2),  # whole micro-batches per rank, double backprop: exact
     ("kd", 1)],  # micro-batches split by examples: exact for example-averaged terms
)
def test_two_gloo_processes_match_one_process(setup: dict[str, Path], method: str, accumulation: int) -> None:
    single = config_for(setup, f"{method}-single", method, gradient_accumulation_steps=accumulation)
    double = config_for(setup, f"{method}-ddp", method, gradient_accumulation_steps=accumulation)
    one, two = Losses(), Losses()
    reference = Trainer(single, [one]).train(resume=False)
    result = train_distributed(double, 2, [two], resume=False)

    assert not result.stopped and result.steps == reference.steps > 2
    assert two.losses == pytest.approx(one.losses, rel=1e-4, abs=1e-6)
    assert result.best_metrics["accuracy"] == pytest.approx(reference.best_metrics["accuracy"])
    assert_same_weights(weights(single), weights(double))
    init = load_file(str(setup["teacher"] / "model.safetensors"))
    trained = weights(single)
    assert any(not torch.allclose(trained[k], init[k]) for k in trained if k in init)  # training moved weights


def test_stop_on_rank_zero_stops_all_ranks_and_saves_state(setup: dict[str, Path]) -> None:
    config = config_for(setup, "stopped", "gradient_kd", gradient_accumulation_steps=2)
    callback = Losses(stop_at=2)
    result = train_distributed(config, 2, [callback], resume=False)
    assert result.stopped and result.steps == 2 and len(callback.losses) == 2
    state = torch.load(Path(config.run.output_dir) / "state" / STATE_FILE, weights_only=False)
    assert state["loop"]["step"] == 2


def test_one_device_is_the_plain_trainer(setup: dict[str, Path]) -> None:
    config = config_for(setup, "plain", "ce", epochs=1)
    result = train_distributed(config, 1, resume=False)
    assert result.steps == 6 and not result.stopped
    assert not torch.distributed.is_initialized()  # no process group: the one process trained alone


def test_two_processes_with_a_pruned_vocabulary_export_it_and_measure_test_through_it(setup: dict[str, Path]) -> None:
    base = config_for(setup, "pruned-ddp", "kd", epochs=1)
    test = write_csv(setup["root"] / "test.csv", [{"text": "superb tedious film", "label": "positive"},
                                                  *sentiment_rows(6, seed=9)])
    config = base.model_copy(update={
        "student": base.student.model_copy(update={"vocabulary": "training_data"}),
        "data": base.data.model_copy(update={"test": str(test)})})
    result = train_distributed(config, 2, resume=False)
    assert not result.stopped and result.test_metrics and 0.0 <= result.test_metrics["accuracy"] <= 1.0
    card = json.loads((Path(config.run.output_dir) / "best" / "gkd_card.json").read_text(encoding="utf-8"))
    assert card["vocabulary"]["kept_tokens"] < card["vocabulary"]["full_tokens"]
