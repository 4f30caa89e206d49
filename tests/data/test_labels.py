"""Data labels onto teacher labels (gkd.data.labels): integers onto LABEL_i, an explicit label_map, clear refusals; a
run with integer labels and a LABEL_i teacher trains and keeps the teacher's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from gkd.config import ConfigError, DistillConfig
from gkd.data.labels import LabelMapError, label_map_for
from gkd.training.trainer import Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv


def test_names_that_match_need_no_map() -> None:
    assert label_map_for(["negative", "positive"], ["negative", "positive"]) == {}
    assert label_map_for(["positive"], ["negative", "positive"]) == {}


def test_integer_labels_map_onto_a_teachers_default_names() -> None:
    assert label_map_for(["0", "1", "2"], ["LABEL_0", "LABEL_1", "LABEL_2"]) == {
        "0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}


def test_an_explicit_map_wins_and_unmapped_teacher_names_pass_through() -> None:
    assert label_map_for(["0", "1"], ["negative", "positive"], {"0": "negative", "1": "positive"}) == {
        "0": "negative", "1": "positive"}
    assert label_map_for(["bad", "positive"], ["negative", "positive"], {"bad": "negative"}) == {"bad": "negative"}


def test_what_does_not_fit_is_refused_with_a_copy_paste_hint() -> None:
    with pytest.raises(LabelMapError) as info:
        label_map_for(["0", "1"], ["negative", "positive"])
    assert "['0', '1']" in info.value.message
    assert '"label_map": {"0": "negative", "1": "positive"}' in info.value.message
    with pytest.raises(LabelMapError, match="not the teacher's labels"):
        label_map_for(["0", "1"], ["negative", "positive"], {"0": "nope"})
    with pytest.raises(LabelMapError):  # LABEL_2 does not exist: no silent partial mapping
        label_map_for(["0", "2"], ["LABEL_0", "LABEL_1"])


def _rows_with_integer_labels(n: int, seed: int) -> list[dict[str, str]]:
    return [{**row, "label": "1" if row["label"] == "positive" else "0"} for row in sentiment_rows(n, seed=seed)]


@pytest.mark.parametrize("labels, label_map", [(("LABEL_0", "LABEL_1"), None),
                                               (("negative", "positive"), {"0": "negative", "1": "positive"})])
def test_a_run_on_integer_labels_trains_with_the_teachers_names(tmp_path: Path, labels, label_map) -> None:
    teacher = make_tiny_teacher(tmp_path / "teacher", labels=labels)
    train = write_csv(tmp_path / "train.csv", _rows_with_integer_labels(24, 0))
    dev = write_csv(tmp_path / "dev.csv", _rows_with_integer_labels(8, 1))
    config = DistillConfig.parse({
        "method": "kd", "teacher": str(teacher), "student": {"num_layers": 1},
        "data": {"train": str(train), "dev": str(dev), "label_map": label_map},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16},
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
    })
    result = Trainer(config).train()
    assert result.labels == list(labels) and result.steps == 3


def test_a_run_whose_labels_do_not_fit_names_label_map(tmp_path: Path) -> None:
    teacher = make_tiny_teacher(tmp_path / "teacher")
    train = write_csv(tmp_path / "train.csv", _rows_with_integer_labels(16, 0))
    config = DistillConfig.parse({"method": "kd", "teacher": str(teacher), "data": {"train": str(train)},
                                  "output_dir": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(ConfigError) as info:
        Trainer(config).train()
    assert info.value.param == "data" and "label_map" in info.value.message


def test_a_bad_explicit_map_is_named_as_the_culprit(tmp_path: Path) -> None:
    teacher = make_tiny_teacher(tmp_path / "teacher")
    train = write_csv(tmp_path / "train.csv", _rows_with_integer_labels(16, 0))
    config = DistillConfig.parse({"method": "kd", "teacher": str(teacher),
                                  "data": {"train": str(train), "label_map": {"0": "negative", "1": "nope"}},
                                  "output_dir": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(ConfigError) as info:
        Trainer(config).train()
    assert info.value.param == "data.label_map" and "nope" in info.value.message
