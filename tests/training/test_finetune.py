"""`gkd teacher finetune`: a bare encoder becomes a teacher that distillation then accepts."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gkd.cli import main
from gkd.models.teacher import describe_teacher
from tests.support.factories import make_tiny_base_encoder, sentiment_rows, write_csv


def test_finetune_makes_a_teacher_with_a_card_and_distillation_accepts_it(tmp_path: Path) -> None:
    encoder = make_tiny_base_encoder(tmp_path / "encoder")
    assert describe_teacher(encoder).labels == []  # no head: not a teacher yet
    train = write_csv(tmp_path / "train.csv", sentiment_rows(48))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=1))
    out = tmp_path / "teacher"
    result = CliRunner().invoke(main, ["teacher", "finetune", "--base", str(encoder), "--data", str(train),
                                       "--dev", str(dev), "--test", str(dev), "--out", str(out), "--epochs", "2",
                                       "--max-length", "16", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card == json.loads((out / "gkd_card.json").read_text())
    assert card["made_by"] == "gkd teacher finetune" and card["epochs"] == 2
    assert card["labels"] == ["negative", "positive"] and 0.0 <= card["dev_accuracy"] <= 1.0
    assert card["data"]["train"]["file"] == "train.csv" and len(card["data"]["train"]["sha256"]) == 64
    assert "config" not in card  # the run's server paths stay out of the teacher's card
    info = describe_teacher(out)
    assert info.labels == ["negative", "positive"] and info.num_layers == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or work dir left behind

    config = tmp_path / "distill.yaml"
    config.write_text(json.dumps({
        "method": "gradient_kd", "teacher": str(out), "student": {"num_layers": 1},
        "data": {"train": str(train), "dev": str(dev)},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16},
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}))
    distilled = CliRunner().invoke(main, ["distill", str(config), "--json"])
    assert distilled.exit_code == 0, distilled.output
    assert json.loads(distilled.stdout)["teacher_dev"]["accuracy"] >= 0.0


def test_finetune_on_an_empty_file_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    encoder = make_tiny_base_encoder(tmp_path / "encoder")
    empty = tmp_path / "train.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["teacher", "finetune", "--base", str(encoder), "--data", str(empty),
                                       "--out", str(tmp_path / "teacher")])
    assert result.exit_code == 2
    assert "error:" in result.output and "no rows" in result.output
    assert not (tmp_path / "teacher").exists()
