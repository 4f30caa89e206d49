"""Students started from another pretrained encoder (`student.init: {"model": ...}`): layers come from that model,
the head starts fresh with the teacher's labels, tokenizers must match, widths decide the saliency form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from gkd.config import ConfigError, DistillConfig
from gkd.models.families import ModelError
from gkd.models.student import build_student
from gkd.models.teacher import load_teacher
from gkd.training.trainer import Trainer
from tests.support.factories import (
    make_tiny_family_teacher,
    make_tiny_teacher,
    sentiment_rows,
    tiny_bert_config,
    write_csv,
    write_tokenizer,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init_model")
    other_vocab = root / "other-vocab"
    config = tiny_bert_config(2, 32)
    config.vocab_size += 7
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(config).save_pretrained(str(other_vocab), safe_serialization=True)
    write_tokenizer(other_vocab)
    (other_vocab / "vocab.txt").write_text((other_vocab / "vocab.txt").read_text() + "extra\n")
    (other_vocab / "tokenizer.json").unlink(missing_ok=True)
    return {
        "teacher": make_tiny_teacher(root / "teacher", num_layers=4, hidden=32),
        "base": make_tiny_teacher(root / "base", num_layers=3, hidden=48, labels=("a", "b", "c"), seed=3),
        "distilbert": make_tiny_family_teacher(root / "distilbert", "distilbert", num_layers=3, hidden=32, seed=4),
        "other-vocab": other_vocab,
    }


def run_config(models: dict[str, Path], method: str = "gradient_kd", **init) -> DistillConfig:
    return DistillConfig.parse({"method": method, "teacher": str(models["teacher"]), "data": {"train": "unused"},
                                "student": {"num_layers": 2, "init": init}, "hyperparameters": {"seed": 7}})


def layer(model: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
    return model.bert.encoder.layer[index].state_dict()


def test_layers_come_from_the_starting_model_and_the_head_is_fresh(models: dict[str, Path]) -> None:
    teacher = load_teacher(models["teacher"])
    base = load_teacher(models["base"], labels=teacher.labels)
    student = build_student(teacher, run_config(models, model=str(models["base"]), layers=[0, 2]))
    assert student.config.hidden_size == 48 and student.config.num_hidden_layers == 2
    for j, i in enumerate([0, 2]):
        assert all(torch.equal(v, layer(base.model, i)[k]) for k, v in layer(student, j).items())
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       base.model.bert.embeddings.word_embeddings.weight)
    # The starting model was a 3-label classifier: the student's head has the teacher's 2 labels, freshly drawn.
    assert student.classifier.out_features == 2
    assert student.config.id2label == {0: "negative", 1: "positive"}
    assert student.config.hidden_dropout_prob == 0.0


def test_a_starting_model_of_another_family_with_the_same_tokenizer(models: dict[str, Path]) -> None:
    teacher = load_teacher(models["teacher"])
    student = build_student(teacher, run_config(models, model=str(models["distilbert"]), layers="every_other"))
    assert student.config.model_type == "distilbert" and student.config.n_layers == 2
    assert student.config.dropout == 0.0 and student.config.attention_dropout == 0.0


def test_another_tokenizer_is_refused(models: dict[str, Path]) -> None:
    teacher = load_teacher(models["teacher"])
    with pytest.raises(ModelError) as info:
        build_student(teacher, run_config(models, model=str(models["other-vocab"])))
    assert info.value.param == "student.init.model" and "tokenizer differs" in info.value.message


def test_depth_layers_and_width_are_checked_against_the_starting_model(models: dict[str, Path]) -> None:
    teacher = load_teacher(models["teacher"])
    with pytest.raises(ConfigError) as info:
        build_student(teacher, run_config(models, model=str(models["base"]), layers=[0, 5]))
    assert info.value.param == "student.init.layers"
    with pytest.raises(ConfigError) as info:  # pkd compares hidden states: 48 against the teacher's 32
        build_student(teacher, run_config(models, method="pkd", model=str(models["base"])))
    assert info.value.param == "student.init.model" and "width" in info.value.message


def test_a_run_from_a_wider_encoder_trains_and_exports(models: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_rows(24, seed=0))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(8, seed=1))
    run = DistillConfig.parse({
        "method": "gradient_kd", "teacher": str(models["teacher"]),
        "student": {"num_layers": 2, "init": {"model": str(models["base"]), "layers": "every_other"}},
        "data": {"train": str(train), "dev": str(dev)},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32,
                            "gradient_start_ratio": 0.0, "gradient_warmup_ratio": 0.0},
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
    })
    trainer = Trainer(run)
    result = trainer.train()
    assert result.steps == 3 and result.final_dir is not None
    assert not trainer._vector_form(trainer_student(result), load_teacher(models["teacher"]))  # noqa: SLF001
    assert -1.0 <= result.final_metrics["saliency_agreement"] <= 1.0  # compared per token across widths
    exported = AutoModelForSequenceClassification.from_pretrained(str(result.final_dir))
    assert exported.config.hidden_size == 48 and exported.config.num_hidden_layers == 2
    assert exported.config.label2id == {"negative": 0, "positive": 1}


def trainer_student(result) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(str(result.final_dir))
