"""Per-epoch checkpoints (`hyperparameters.n_checkpoints`: the newest N kept) and a student continued from an
earlier run's checkpoint (`student.init.checkpoint`): its weights are where it starts, its checks name a field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gkd.config import ConfigError
from gkd.training.trainer import Trainer
from tests.training.test_trainer import (  # noqa: F401 - fixtures
    Recorder,
    data,  # noqa: F401 - fixture
    make_config,
    random_teacher,
)


def test_n_checkpoints_keeps_the_newest_epochs(tmp_path: Path, random_teacher: Path, data) -> None:  # noqa: F811
    recorder = Recorder()
    config = make_config(tmp_path, random_teacher, data, "kd", "run", epochs=3, n_checkpoints=2)
    result = Trainer(config, [recorder]).train()
    assert [k for k in recorder.checkpoints if k.startswith("epoch-")] == ["epoch-1", "epoch-2", "epoch-3"]
    kept = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("epoch-"))
    assert kept == ["epoch-2", "epoch-3"]
    # The last epoch's export holds the final weights.
    final = load_file(str(result.final_dir / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "epoch-3" / "model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def test_no_epoch_checkpoints_by_default(tmp_path: Path, random_teacher: Path, data) -> None:  # noqa: F811
    recorder = Recorder()
    Trainer(make_config(tmp_path, random_teacher, data, "kd", "run", epochs=1), [recorder]).train()
    assert not [k for k in recorder.checkpoints if k.startswith("epoch-")]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith("epoch-")]


def test_continue_from_a_checkpoint(tmp_path: Path, random_teacher: Path, data) -> None:  # noqa: F811
    first = Trainer(make_config(tmp_path, random_teacher, data, "kd", "first", epochs=1)).train()
    assert first.final_dir is not None
    start = load_file(str(first.final_dir / "model.safetensors"))

    config = make_config(tmp_path, random_teacher, data, "kd", "second",
                         student={"num_layers": 2, "init": {"checkpoint": str(first.final_dir)}}, epochs=1)
    trainer = Trainer(config)
    run = trainer.setup()
    continued = {k: v.detach().cpu() for k, v in run.student.state_dict().items()}
    assert start.keys() <= continued.keys()
    assert all(torch.equal(start[k], continued[k]) for k in start), "the student starts from the checkpoint"
    result = trainer.finish(run, trainer.loop(run))
    assert result.final_dir is not None and result.steps > 0
    after = load_file(str(result.final_dir / "model.safetensors"))
    assert any(not torch.equal(start[k], after[k]) for k in start), "and trains on"
    assert load_file(str(first.final_dir / "model.safetensors")).keys() == start.keys()  # the source is unchanged


def test_continue_checks_depth_and_width(tmp_path: Path, random_teacher: Path, data) -> None:  # noqa: F811
    first = Trainer(make_config(tmp_path, random_teacher, data, "kd", "first", epochs=1)).train()
    deeper = make_config(tmp_path, random_teacher, data, "kd", "deeper",
                         student={"num_layers": 3, "init": {"checkpoint": str(first.final_dir)}})
    with pytest.raises(ConfigError) as error:
        Trainer(deeper).train()
    assert error.value.param == "student.num_layers" and "2 layers" in error.value.message
    missing = make_config(tmp_path, random_teacher, data, "kd", "missing",
                          student={"num_layers": 2, "init": {"checkpoint": str(tmp_path / "nothing")}})
    with pytest.raises(ConfigError) as error:
        Trainer(missing).train()
    assert error.value.param == "student.init.checkpoint"
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, random_teacher, data, "kd", "wide",
                    student={"num_layers": 2, "hidden_size": 16, "init": {"checkpoint": str(first.final_dir)}})
