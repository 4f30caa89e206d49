"""Students cut from a tiny real BERT teacher: which layers are copied, what is frozen, what starts fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gkd.config import ConfigError, DistillConfig
from gkd.models.families import embedding_module
from gkd.models.student import build_student, select_teacher_layers
from gkd.models.teacher import Teacher, load_teacher
from tests.support.factories import make_tiny_teacher

TEACHER_LAYERS = 4


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Teacher:
    directory = make_tiny_teacher(tmp_path_factory.mktemp("teacher"), num_layers=TEACHER_LAYERS)
    return load_teacher(directory)


def config(method: str = "gradient_kd", **student) -> DistillConfig:
    return DistillConfig.parse({"method": method, "teacher": "unused", "data": {"train": "unused.csv"},
                                "student": student, "hyperparameters": {"seed": 42}})


def layer_state(model: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
    return model.bert.encoder.layer[index].state_dict()


def same_layer(student: torch.nn.Module, j: int, teacher: torch.nn.Module, i: int) -> bool:
    a, b = layer_state(student, j), layer_state(teacher, i)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copied_from(student: torch.nn.Module, teacher: torch.nn.Module) -> list[int | None]:
    """For every student layer, the teacher layer it equals exactly (None if none)."""
    found: list[int | None] = []
    for j in range(student.config.num_hidden_layers):
        matches = [i for i in range(TEACHER_LAYERS) if same_layer(student, j, teacher, i)]
        assert len(matches) <= 1
        found.append(matches[0] if matches else None)
    return found


def test_teacher_layers_are_distinct(teacher: Teacher):
    # otherwise "copied from layer i" below would be ambiguous
    for i in range(TEACHER_LAYERS):
        for j in range(i + 1, TEACHER_LAYERS):
            assert not same_layer(teacher.model, i, teacher.model, j)


@pytest.mark.parametrize(
    ("student_spec", "expected"),
    [
        ({"num_layers": 2, "init": "bottom"}, [0, 1]),
        ({"num_layers": 3, "init": "bottom"}, [0, 1, 2]),
        ({"num_layers": 2, "init": "every_other"}, [0, 2]),
        ({"num_layers": 2, "init": [1, 3]}, [1, 3]),
        ({"num_layers": 2, "init": [3, 0]}, [3, 0]),
        ({"num_layers": 4, "init": "bottom"}, [0, 1, 2, 3]),
    ],
)
def test_student_copies_the_chosen_teacher_layers(teacher: Teacher, student_spec, expected):
    student = build_student(teacher, config(**student_spec))
    assert student.config.num_hidden_layers == student_spec["num_layers"]
    assert copied_from(student, teacher.model) == expected


def test_random_init_copies_no_encoder_layer(teacher: Teacher):
    student = build_student(teacher, config(num_layers=2, init="random"))
    assert copied_from(student, teacher.model) == [None, None]
    # not even a single weight matrix of any teacher layer
    for j in range(2):
        for i in range(TEACHER_LAYERS):
            a, b = layer_state(student, j), layer_state(teacher.model, i)
            assert not any(torch.equal(a[k], b[k]) for k in a if k.endswith("dense.weight"))


def test_select_teacher_layers_every_other_general_case():
    assert select_teacher_layers(config(num_layers=6, init="every_other").student, 12) == [0, 2, 4, 6, 8, 10]
    assert select_teacher_layers(config(num_layers=3, init="every_other").student, 12) == [0, 4, 8]
    assert select_teacher_layers(config(num_layers=3, init="every_other").student, 4) == [0, 1, 2]
    assert select_teacher_layers(config(num_layers=3).student, 12) == [0, 1, 2]
    assert select_teacher_layers(config(num_layers=2, init="random").student, 12) is None


@pytest.mark.parametrize("method", ["ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls"])
def test_every_method_copies_and_trains_embeddings_without_dropout_by_default(teacher: Teacher, method: str):
    student = build_student(teacher, config(method, num_layers=2))
    student_emb, teacher_emb = embedding_module(student).state_dict(), embedding_module(teacher.model).state_dict()
    assert student_emb.keys() == teacher_emb.keys()
    assert all(torch.equal(student_emb[k], teacher_emb[k]) for k in student_emb)
    assert all(p.requires_grad for p in embedding_module(student).parameters())
    assert all(p.requires_grad for p in student.bert.encoder.parameters())
    assert all(p.requires_grad for p in student.classifier.parameters())
    assert teacher.model.config.hidden_dropout_prob == 0.1
    assert student.config.hidden_dropout_prob == 0.0 and student.config.attention_probs_dropout_prob == 0.0


@pytest.mark.parametrize("method", ["kd", "gradient_kd", "gradient_kd_cls"])
def test_embeddings_are_frozen_on_request(teacher: Teacher, method: str):
    student = build_student(teacher, config(method, num_layers=2, embeddings="frozen"))
    assert torch.equal(embedding_module(student).word_embeddings.weight,
                       embedding_module(teacher.model).word_embeddings.weight)
    assert all(not p.requires_grad for p in embedding_module(student).parameters())
    assert all(p.requires_grad for p in student.bert.encoder.parameters())


def test_explicit_dropout_is_used(teacher: Teacher):
    student = build_student(teacher, config("gradient_kd", num_layers=2, dropout=0.2))
    assert student.config.hidden_dropout_prob == 0.2 and student.config.attention_probs_dropout_prob == 0.2


def test_pooler_and_classifier_start_fresh_on_request(teacher: Teacher):
    student = build_student(teacher, config("kd", num_layers=4, head="fresh"))
    for name in ("classifier.weight", "bert.pooler.dense.weight"):
        s, t = student.state_dict()[name], teacher.model.state_dict()[name]
        assert s.shape == t.shape
        assert not torch.equal(s, t), name


def test_pooler_and_classifier_come_from_the_teacher_by_default(teacher: Teacher):
    student = build_student(teacher, config("kd", num_layers=2))
    for name in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight"):
        assert torch.equal(student.state_dict()[name], teacher.model.state_dict()[name]), name


def test_student_is_deterministic_in_the_seed(teacher: Teacher):
    a = build_student(teacher, config("kd", num_layers=2, head="fresh"))
    b = build_student(teacher, config("kd", num_layers=2, head="fresh"))
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    other = config("kd", num_layers=2, head="fresh")
    other.hyperparameters.seed = 7
    c = build_student(teacher, other)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_student_forward_runs_with_eager_attention(teacher: Teacher):
    student = build_student(teacher, config("gradient_kd", num_layers=2)).eval()
    encoded = teacher.tokenizer(["a good film", "it was dull and boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = student(**encoded).logits
    assert logits.shape == (2, 2)
    assert student.config._attn_implementation == "eager"


def test_narrow_student_starts_fresh(teacher: Teacher):
    student = build_student(teacher, config("gradient_kd", num_layers=2, hidden_size=16))
    assert student.config.hidden_size == 16
    assert student.config.hidden_size % student.config.num_attention_heads == 0
    assert embedding_module(student).word_embeddings.weight.shape == (teacher.model.config.vocab_size, 16)


def test_student_deeper_than_teacher_is_refused(teacher: Teacher):
    with pytest.raises(ConfigError) as info:
        build_student(teacher, config(num_layers=TEACHER_LAYERS + 1))
    assert info.value.param == "student.num_layers"


def test_explicit_layer_out_of_range_is_refused(teacher: Teacher):
    with pytest.raises(ConfigError) as info:
        build_student(teacher, config(num_layers=2, init=[1, TEACHER_LAYERS]))
    assert info.value.param == "student.init"
    assert str(TEACHER_LAYERS) in info.value.message


def test_load_teacher_refuses_pickles(tmp_path: Path):
    directory = make_tiny_teacher(tmp_path / "t", num_layers=1)
    (directory / "pytorch_model.bin").write_bytes(b"not really")
    from gkd.models.families import ModelError

    with pytest.raises(ModelError) as info:
        load_teacher(directory)
    assert info.value.param == "weights"
