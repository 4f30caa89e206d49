"""DistillConfig: documented defaults, and bad configs give one ConfigError naming the bad field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gkd.config import ConfigError, DistillConfig, Hyperparameters, StudentSpec
from gkd.method.properties import layer_map

BASE = {"teacher": "models/teacher", "data": {"train": "train.csv"}}


def parse(**overrides) -> DistillConfig:
    return DistillConfig.parse({**BASE, **overrides})


def error_of(**overrides) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(**overrides)
    return info.value


def test_minimal_config_has_the_documented_defaults():
    config = parse()
    hp = config.hyperparameters
    assert config.method == "gradient_kd"
    assert (hp.learning_rate, hp.batch_size, hp.epochs, hp.temperature, hp.alpha, hp.seed, hp.max_length) == (
        1e-4, 32, 4, 5.0, 0.5, 42, 128,
    )
    assert hp.accuracy_guard is True
    assert hp.kl_reduction == "mean"
    assert config.student.init == "bottom"
    assert config.run.device == "auto" and config.run.cache == "auto" and config.run.devices == 1


@pytest.mark.parametrize(
    ("overrides", "param", "words"),
    [
        ({"method": "distil"}, "method", "gradient_kd"),
        ({"hyperparameters": {"beta": -0.1}}, "hyperparameters.beta", 'a number from 0 to 1e6 or "auto"'),
        ({"hyperparameters": {"beta": "automatic"}}, "hyperparameters.beta", 'a number from 0 to 1e6 or "auto"'),
        ({"hyperparameters": {"gamma": -1}}, "hyperparameters.gamma", "greater than or equal to 0"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate", "greater than 0"),
        ({"hyperparameters": {"learning_rate": -1e-5}}, "hyperparameters.learning_rate", "greater than 0"),
        ({"hyperparameters": {"alpha": 1.5}}, "hyperparameters.alpha", "less than or equal to 1"),
        ({"hyperparameters": {"kl_reduction": "sum"}}, "hyperparameters.kl_reduction", "batchmean"),
        ({"device": "gpu"}, "run.device", "cuda:N"),
        ({"device": "cuda:x"}, "run.device", "cuda:N"),
        ({"run": {"device": "cuda:"}}, "run.device", "cuda:N"),
        ({"devices": 0}, "run.devices", "greater than or equal to 1"),
        ({"student": {"num_layers": 2, "init": [0, 1, 2]}}, "student", "init lists 3 teacher layers"),
        ({"student": {"num_layers": 2, "init": [1, 1]}}, "student.init", "must not repeat"),
        ({"student": {"num_layers": 2, "init": [-1, 1]}}, "student.init", "negative"),
        ({"student": {"num_layers": 1, "init": []}}, "student.init", "must not be empty"),
        ({"student": {"init": "sideways"}}, "student.init", "every_other"),
        ({"student": {"num_layers": 0}}, "student.num_layers", "greater than or equal to 1"),
        ({"student": {"dropout": 1.0}}, "student.dropout", "less than 1"),
        ({"learning_rate": 1e-3}, "learning_rate", "Extra inputs are not permitted"),
        ({"hyperparameters": {"lr": 1e-3}}, "hyperparameters.lr", "Extra inputs are not permitted"),
        ({"data": {"dev": "dev.csv"}}, "data.train", "Field required"),
        ({"cache": "sometimes"}, "run.cache", "refresh"),
    ],
)
def test_bad_values_name_the_field(overrides, param, words):
    error = error_of(**overrides)
    assert error.param == param
    assert words in error.message
    assert isinstance(error, ValueError)  # callers that only know ValueError still catch it


def test_missing_teacher_is_reported():
    with pytest.raises(ConfigError) as info:
        DistillConfig.parse({"data": {"train": "x.csv"}})
    assert info.value.param == "teacher"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"method": "gradient_kd_cls", "student": {"hidden_size": 16}}, "gradient_kd_cls"),
        ({"method": "pkd", "student": {"hidden_size": 16}}, "pkd"),
        ({"student": {"hidden_size": 16}, "hyperparameters": {"saliency_form": "vector"}}, "vector"),
    ],
)
def test_cross_field_rules(overrides, words):
    error = error_of(**overrides)
    assert words in error.message


def test_width_change_is_fine_for_gradient_kd_with_auto_form():
    config = parse(student={"hidden_size": 16})
    assert config.student.hidden_size == 16


def test_valid_explicit_layer_list_and_devices():
    config = parse(student={"num_layers": 2, "init": [1, 3]}, device="cuda:1")
    assert config.student.init == [1, 3]
    assert config.run.device == "cuda:1"
    assert parse(device="cpu").run.device == "cpu"


def test_validate_assignment_rejects_bad_updates():
    hp = Hyperparameters()
    with pytest.raises(ValueError):
        hp.beta = -1.0
    assert hp.beta == Hyperparameters().beta  # unchanged by the refused update


def test_load_yaml_and_json(tmp_path: Path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "method: kd\nteacher: models/t\ndata:\n  train: train.csv\nhyperparameters:\n  beta: 10\n  epochs: 2\n",
        encoding="utf-8",
    )
    config = DistillConfig.load(yaml_file)
    assert config.method == "kd"
    assert config.hyperparameters.beta == 10.0 and config.hyperparameters.epochs == 2
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({**BASE, "method": "pkd"}), encoding="utf-8")
    assert DistillConfig.load(json_file).method == "pkd"
    # a dump round-trips
    dumped = tmp_path / "dump.json"
    dumped.write_text(json.dumps(config.model_dump(mode="json")), encoding="utf-8")
    assert DistillConfig.load(dumped) == config


def test_load_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        DistillConfig.load(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- method: kd\n- teacher: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping") as info:
        DistillConfig.load(listing)
    assert info.value.param is None
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        DistillConfig.load(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [kd\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DistillConfig.load(broken)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{method: kd}", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DistillConfig.load(bad_json)
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("teacher: t\ndata: {train: x.csv}\nhyperparameters: {beta: -2}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        DistillConfig.load(bad_value)
    assert info.value.param == "hyperparameters.beta"


def test_effective_dropout():
    for method in ("ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls"):
        assert parse(method=method).student.dropout == 0.0
    assert parse(method="gradient_kd", student={"dropout": 0.3}).student.dropout == 0.3
    assert parse(method="kd", student={"dropout": 0.1}).student.dropout == 0.1
    # null (what earlier versions stored for "the default") still reads as the default
    assert parse(student={"dropout": None, "embeddings": None}).student == StudentSpec()


def test_layer_map_matches_the_paper_and_generalises():
    assert layer_map(12, 6) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert layer_map(12, 4) == [(1, 3), (2, 6), (3, 9)]
    # 4 -> 3: k * 4/3 = 1.33, 2.67 -> 1, 3
    assert layer_map(4, 3) == [(1, 1), (2, 3)]
    # halves round up: 6 -> 4 gives 1.5, 3.0, 4.5 -> 2, 3, 5
    assert layer_map(6, 4) == [(1, 2), (2, 3), (3, 5)]
    assert layer_map(4, 4) == [(1, 1), (2, 2), (3, 3)]
    assert layer_map(12, 1) == []


def test_student_spec_defaults():
    spec = StudentSpec()
    assert spec.num_layers == 3 and spec.init == "bottom" and spec.hidden_size is None and spec.dropout == 0.0
    assert spec.embeddings == "trainable" and spec.head == "teacher"


def test_run_settings_load_at_the_top_level_and_under_run(tmp_path: Path):
    """Configs written before `run` existed keep loading; a top-level key overrides the same key under `run`."""
    old = parse(output_dir="var/runs/x", device="cpu", cache="off", num_threads=2, precision="fp32")
    new = parse(run={"output_dir": "var/runs/x", "device": "cpu", "cache": "off", "num_threads": 2,
                     "precision": "fp32"})
    assert old == new and old.run.output_dir == "var/runs/x" and old.run.cache == "off"
    assert parse(run={"device": "cuda", "devices": 2}, device="cpu").run.model_dump(include={"device", "devices"}) == {
        "device": "cpu", "devices": 2}
    example = DistillConfig.load(Path(__file__).resolve().parents[1] / "examples" / "movie_reviews_gradient_kd.yaml")
    assert example.run.output_dir == "var/runs/movie-reviews-gradient-kd"
    assert "run" in example.model_dump() and "output_dir" not in example.model_dump()


def test_field_descriptions_are_one_sentence():
    """Descriptions end up in the public OpenAPI schema; reasoning and measurements belong in docs/methods.md."""
    from gkd.config import DataSpec, InitFromCheckpoint, InitFromModel, RunSettings

    for model in (StudentSpec, Hyperparameters, DataSpec, RunSettings, InitFromModel, InitFromCheckpoint,
                  DistillConfig):
        for name, field in model.model_fields.items():
            text = field.description or ""
            assert len(text) <= 250, f"{model.__name__}.{name}"
            assert text.count(". ") + text.count("; ") <= 1, f"{model.__name__}.{name}: {text}"


def test_export_formats_are_checked_and_default_to_none():
    base = {"teacher": "t", "data": {"train": "x.csv"}}
    assert DistillConfig.parse(base).export == []
    assert DistillConfig.parse({**base, "export": ["onnx-int8", "onnx"]}).export == ["onnx-int8", "onnx"]
    with pytest.raises(ConfigError) as bad:
        DistillConfig.parse({**base, "export": ["tflite"]})
    assert bad.value.param == "export.0"
    with pytest.raises(ConfigError, match="listed once") as twice:
        DistillConfig.parse({**base, "export": ["onnx", "onnx"]})
    assert twice.value.param == "export"
