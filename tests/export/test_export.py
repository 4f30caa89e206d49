"""Exported checkpoints are plain Hugging Face directories that reproduce the student's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from gkd.config import DistillConfig
from gkd.export.checkpoint import CARD_NAME, export_student, read_card
from gkd.models.student import build_student
from gkd.models.teacher import check_model_dir, load_teacher
from gkd.training.trainer import STATE_FILE, Trainer
from tests.support.factories import LABELS, make_tiny_teacher, sentiment_rows, write_csv

SENTENCES = ["the movie was good", "a dull and boring script with too much music", "it is"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"), num_layers=2)


def logits_of(model: torch.nn.Module, tokenizer, sentences=SENTENCES) -> torch.Tensor:
    model.eval()
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits


def test_export_student_round_trip(teacher_dir: Path, tmp_path: Path):
    teacher = load_teacher(teacher_dir)
    config = DistillConfig.parse({"method": "gradient_kd", "teacher": str(teacher_dir), "data": {"train": "x"},
                                  "student": {"num_layers": 1}})
    student = build_student(teacher, config)
    with torch.no_grad():  # make the classifier distinctive so a fresh head could not match by chance
        student.classifier.bias.copy_(torch.tensor([0.3, -0.7]))
    labels = ["bad", "good"]
    directory = export_student(student, teacher.tokenizer, labels, tmp_path / "out" / "best",
                               {"method": "gradient_kd", "metrics": {"accuracy": 0.5}})
    assert directory == tmp_path / "out" / "best"
    # the in-memory student keeps the eager attention that double backward needs
    assert student.config._attn_implementation == "eager"

    loaded = AutoModelForSequenceClassification.from_pretrained(str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    assert loaded.config.id2label == {0: "bad", 1: "good"}
    assert loaded.config.label2id == {"bad": 0, "good": 1}
    assert loaded.config.num_hidden_layers == 1
    assert loaded.config.architectures == ["BertForSequenceClassification"]
    expected = logits_of(student, teacher.tokenizer)
    assert torch.allclose(logits_of(loaded, tokenizer), expected, atol=1e-5)
    assert tokenizer(SENTENCES)["input_ids"] == teacher.tokenizer(SENTENCES)["input_ids"]

    card = read_card(directory)
    assert card["method"] == "gradient_kd" and card["metrics"] == {"accuracy": 0.5}
    assert set(card["versions"]) >= {"gkd", "torch", "transformers"}
    assert card["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # only safetensors, no pickles: the directory passes our own loading rules and can teach
    check_model_dir(directory)
    assert not list(directory.glob("*.bin"))
    assert load_teacher(directory).labels == labels
    # no temporary directories are left next to it
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["best"]


def test_export_replaces_an_existing_directory(teacher_dir: Path, tmp_path: Path):
    teacher = load_teacher(teacher_dir)
    target = tmp_path / "final"
    export_student(teacher.model, teacher.tokenizer, list(LABELS), target, {"method": "ce", "step": 1})
    (target / "stale.txt").write_text("old", encoding="utf-8")
    export_student(teacher.model, teacher.tokenizer, list(LABELS), target, {"method": "kd", "step": 2})
    assert read_card(target)["step"] == 2
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_failed_export_leaves_no_directory(teacher_dir: Path, tmp_path: Path):
    teacher = load_teacher(teacher_dir)

    class Unserialisable:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        export_student(teacher.model, teacher.tokenizer, list(LABELS), tmp_path / "best",
                       {"method": "kd", "metrics": Unserialisable()})
    assert list(tmp_path.iterdir()) == []
    assert teacher.model.config._attn_implementation == "eager"


def test_failed_save_keeps_eager_attention(teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    teacher = load_teacher(teacher_dir)

    def disk_full(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(teacher.model, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="no space"):
        export_student(teacher.model, teacher.tokenizer, list(LABELS), tmp_path / "best", {"method": "kd"})
    assert teacher.model.config._attn_implementation == "eager"
    assert list(tmp_path.iterdir()) == []


def test_trainer_exports_best_and_final_that_match_the_trained_student(teacher_dir: Path, tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(24, seed=0))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(8, seed=1))
    config = DistillConfig.parse({
        "method": "kd", "teacher": str(teacher_dir), "student": {"num_layers": 1},
        "data": {"train": str(train), "dev": str(dev)},
        "hyperparameters": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32},
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
    })
    result = Trainer(config).train()
    assert result.final_dir == tmp_path / "run" / "final"
    assert result.best_dir == tmp_path / "run" / "best"

    # the final export equals the student the loop ended with (kept in the training state)
    state = torch.load(tmp_path / "run" / "state" / STATE_FILE, weights_only=False)
    final = AutoModelForSequenceClassification.from_pretrained(str(result.final_dir))
    in_memory = AutoModelForSequenceClassification.from_config(final.config)
    in_memory.load_state_dict(state["model"])
    tokenizer = AutoTokenizer.from_pretrained(str(result.final_dir))
    assert torch.allclose(logits_of(final, tokenizer), logits_of(in_memory, tokenizer), atol=1e-5)
    assert final.config.id2label == dict(enumerate(LABELS))

    final_card = json.loads((result.final_dir / CARD_NAME).read_text(encoding="utf-8"))
    assert final_card["method"] == "kd" and final_card["checkpoint"] == "final"
    assert final_card["metrics"] == result.final_metrics
    assert final_card["config"]["hyperparameters"]["epochs"] == 2
    assert set(final_card["versions"]) >= {"gkd", "torch", "transformers"}
    best_card = read_card(result.best_dir)
    assert best_card["checkpoint"] == "best"
    assert best_card["metrics"]["accuracy"] == result.best_metrics["accuracy"]
    assert best_card["step"] == int(result.best_metrics["step"])
    best = AutoModelForSequenceClassification.from_pretrained(str(result.best_dir))
    assert best.config.id2label == dict(enumerate(LABELS))
