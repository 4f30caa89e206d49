"""Every supported encoder family, on tiny random classifiers saved as users upload them: layers copied per init,
dropout off under the family's own names, double backward through its attention (gradcheck), every method
trains, export round trip, registry facts, and the refusal of what we do not support.

Expected names below (layer paths, dropout fields) are written out from transformers 5.x on purpose, not read
from `gkd.models.families`, so a wrong table entry fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from gkd.config import DistillConfig, Hyperparameters
from gkd.data.batching import Batch, collate, encode
from gkd.method.objective import TeacherTargets, model_inputs, student_loss_parts, teacher_targets
from gkd.method.properties import METHODS, layer_map
from gkd.models.families import ModelError
from gkd.models.student import build_student
from gkd.models.teacher import Teacher, check_model_dir, describe_teacher, load_teacher
from gkd.training.trainer import Trainer
from tests.support.factories import (
    FAMILY_TYPES,
    make_tiny_family_teacher,
    make_tiny_gpt2,
    sentiment_rows,
    tiny_family_config,
    write_csv,
)

TEACHER_LAYERS = 4
LAYER_PATHS = {
    "bert": "bert.encoder.layer", "roberta": "roberta.encoder.layer", "xlm-roberta": "roberta.encoder.layer",
    "electra": "electra.encoder.layer", "deberta-v2": "deberta.encoder.layer", "mpnet": "mpnet.encoder.layer",
    "distilbert": "distilbert.transformer.layer", "modernbert": "model.layers",
    "albert": "albert.encoder.albert_layer_groups",  # one shared group, not one module per layer
}
BERT_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
DROPOUTS = {
    "bert": (*BERT_DROPOUTS, "classifier_dropout"), "roberta": (*BERT_DROPOUTS, "classifier_dropout"),
    "xlm-roberta": (*BERT_DROPOUTS, "classifier_dropout"), "electra": (*BERT_DROPOUTS, "classifier_dropout"),
    "deberta-v2": (*BERT_DROPOUTS, "pooler_dropout", "cls_dropout"), "mpnet": BERT_DROPOUTS,
    "albert": (*BERT_DROPOUTS, "classifier_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout", "seq_classif_dropout"),
    "modernbert": ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"),
}
INITS: list[tuple[Any, list[int]]] = [("bottom", [0, 1]), ("every_other", [0, 2]), ([3, 0], [3, 0])]


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {t: make_tiny_family_teacher(root / t, t, num_layers=TEACHER_LAYERS) for t in FAMILY_TYPES}


@pytest.fixture(scope="module")
def teachers(teacher_dirs: dict[str, Path]) -> dict[str, Teacher]:
    return {t: load_teacher(d) for t, d in teacher_dirs.items()}


def config(method: str = "gradient_kd", **student: Any) -> DistillConfig:
    return DistillConfig.parse({"method": method, "teacher": "unused", "data": {"train": "unused.csv"},
                                "student": {"num_layers": 2, **student}, "hyperparameters": {"seed": 42}})


def layer_states(model: PreTrainedModel) -> list[dict[str, torch.Tensor]]:
    return [layer.state_dict() for layer in model.get_submodule(LAYER_PATHS[model.config.model_type])]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Equal on the keys both have; ModernBERT's layer 0 alone lacks attn_norm, nothing else may differ."""
    assert set(a) ^ set(b) <= {"attn_norm.weight", "attn_norm.bias"}, set(a) ^ set(b)
    return all(torch.equal(a[k], b[k]) for k in set(a) & set(b))


def sample_batch(teacher: Teacher, n: int = 6, seed: int = 0) -> Batch:
    rows = sentiment_rows(n, seed=seed)
    dataset = encode(teacher.tokenizer, [r["text"] for r in rows], None, [int(r["label"] == "positive") for r in rows],
                     32)
    return collate(dataset, list(range(n)), int(teacher.tokenizer.pad_token_id or 0))


# ---------------------------------------------------------------- layers, config, dropout
@pytest.mark.parametrize("family", [f for f in FAMILY_TYPES if f != "albert"])
@pytest.mark.parametrize(("init", "expected"), INITS, ids=["bottom", "every_other", "list"])
def test_student_layer_j_is_teacher_layer_init_j(teachers: dict[str, Teacher], family: str, init, expected):
    teacher = teachers[family].model
    student = build_student(teachers[family], config(init=init))
    source, target = layer_states(teacher), layer_states(student)
    assert len(source) == TEACHER_LAYERS and len(target) == 2
    for j, want in enumerate(expected):
        matches = [i for i in range(TEACHER_LAYERS) if same_weights(target[j], source[i])]
        assert matches == [want], (j, matches)
    if family == "modernbert":  # global/local attention cut in step with the copied layers
        assert teacher.config.layer_types == ["full_attention", "sliding_attention"] * 2
        assert student.config.layer_types == [teacher.config.layer_types[i] for i in expected]
        assert [layer.attention_type for layer in student.model.layers] == student.config.layer_types


@pytest.mark.parametrize("init", ["bottom", "every_other", [3, 0]], ids=["bottom", "every_other", "list"])
def test_albert_student_is_fewer_repetitions_of_the_shared_layer(teachers: dict[str, Teacher], init):
    teacher = teachers["albert"]
    student = build_student(teacher, config(init=init)).eval()
    assert student.config.num_hidden_layers == 2 and student.config.num_hidden_groups == 1
    assert same_weights(layer_states(student)[0], layer_states(teacher.model)[0])
    batch = sample_batch(teacher)
    with torch.no_grad():
        s = student(**model_inputs(student, batch), output_hidden_states=True).hidden_states
        t = teacher.model(**model_inputs(teacher.model, batch), output_hidden_states=True).hidden_states
    assert len(s) == 3
    for k in range(3):  # two repetitions of the same weights compute what the teacher's first two do
        torch.testing.assert_close(s[k], t[k])


def test_albert_with_several_layer_groups_copies_each_layer_from_its_group(tmp_path: Path):
    directory = make_tiny_family_teacher(tmp_path / "albert2", "albert", num_layers=4)
    raw = json.loads((directory / "config.json").read_text())
    torch.manual_seed(1)
    grouped = AutoModelForSequenceClassification.from_config(
        type(tiny_family_config("albert")).from_dict({**raw, "num_hidden_groups": 2})
    )
    grouped.save_pretrained(str(directory), safe_serialization=True)
    teacher = load_teacher(directory)
    student = build_student(teacher, config(init=[3, 0]))
    assert student.config.num_hidden_groups == 2
    groups_t, groups_s = layer_states(teacher.model), layer_states(student)
    assert not same_weights(groups_t[0], groups_t[1])
    assert same_weights(groups_s[0], groups_t[1]) and same_weights(groups_s[1], groups_t[0])  # layer 3: group 1


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_student_dropout_is_zero_under_the_family_names(teachers: dict[str, Teacher], family: str):
    teacher = teachers[family].model
    names = DROPOUTS[family]
    assert any(getattr(teacher.config, n, None) == 0.1 for n in names)
    student = build_student(teachers[family], config())
    assert {n: getattr(student.config, n) for n in names} == dict.fromkeys(names, 0.0)
    assert [m.p for m in student.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0] == []
    assert student.config._attn_implementation == "eager"
    explicit = build_student(teachers[family], config(dropout=0.2))
    assert {n: getattr(explicit.config, n) for n in names} == dict.fromkeys(names, 0.2)


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_hidden_states_line_up_for_the_layer_map(teachers: dict[str, Teacher], family: str):
    """pkd and gradient_kd_cls compare [CLS] of hidden_states[k]: with bottom init, student and teacher states
    agree for k <= 1 (embedding output and the shared first layer), so index k means 'after layer k' in both."""
    teacher = teachers[family]
    student = build_student(teacher, config("gradient_kd_cls", init="bottom")).eval()
    batch = sample_batch(teacher)
    targets = teacher_targets(teacher.model, batch)
    assert targets.cls_states is not None and targets.cls_states.shape[1] == TEACHER_LAYERS + 1
    with torch.no_grad():
        hidden = student(**model_inputs(student, batch), output_hidden_states=True).hidden_states
    assert len(hidden) == 3
    for k in (0, 1):
        torch.testing.assert_close(hidden[k][:, 0], targets.cls_states[:, k], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hidden[1][:, 0], targets.cls_states[:, 2], atol=1e-3)


# ---------------------------------------------------------------- double backward through each attention
def _gradcheck_model(family: str) -> PreTrainedModel:
    torch.manual_seed(0)
    model_config = tiny_family_config(family, num_layers=2, hidden=8, heads=2, dropout=0.0)
    model = AutoModelForSequenceClassification.from_config(model_config, attn_implementation="eager")
    return model.double().eval()


@pytest.mark.parametrize("family", FAMILY_TYPES)
@pytest.mark.parametrize("method", ["gradient_kd", "gradient_kd_cls"])
def test_gradient_loss_gradcheck_through_the_family_attention(family: str, method: str):
    """The gradient term's own gradient (double backward) against finite differences, in float64, w.r.t. a
    shift of the embedding output E: through BERT, DeBERTa's disentangled, MPNet's relative, ALBERT's shared
    and ModernBERT's rotary global/local attention, with a padded row."""
    from gkd.models.families import embedding_module

    model = _gradcheck_model(family)
    ids = torch.randint(5, int(model.config.vocab_size), (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    batch = Batch(ids, mask, torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 1]))
    width = embedding_module(model)(input_ids=ids).shape[-1]
    units = torch.nn.functional.normalize(torch.randn(2, 6, width, dtype=torch.float64), dim=-1) * mask[..., None]
    layers = torch.nn.functional.normalize(torch.randn(2, 3, 8, dtype=torch.float64), dim=-1)
    targets = TeacherTargets(logits=torch.randn(2, 2, dtype=torch.float64), unit_gradients=units,
                             cls_states=layers, cls_unit_gradients=layers.flip(1))
    hp = Hyperparameters(beta=1.0, gamma=1.0)
    pairs = layer_map(2, 2) if method == "gradient_kd_cls" else []
    shift = torch.zeros(2, 6, width, dtype=torch.float64, requires_grad=True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        handle = embedding_module(model).register_forward_hook(lambda _m, _i, out: out + x)
        try:
            parts = student_loss_parts(method, hp, model, batch, targets, pairs)
        finally:
            handle.remove()
        assert parts.gradient is not None
        return parts.gradient

    assert loss(shift).item() > 0
    # ModernBERT computes its softmax and rotary embedding in float32 even in a float64 model, so finite
    # differences carry float32 rounding / eps: a wider step keeps them meaningful (measured: max error 1e-5
    # of entries up to 3e-2 at eps 1e-3, against 2.5e-3 at eps 1e-6).
    eps, atol = (1e-3, 5e-5) if family == "modernbert" else (1e-6, 1e-5)
    assert torch.autograd.gradcheck(loss, (shift,), eps=eps, atol=atol, rtol=1e-3)


# ---------------------------------------------------------------- every method trains
@pytest.mark.parametrize("family", FAMILY_TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_steps(teachers: dict[str, Teacher], family: str, method: str):
    teacher = teachers[family]
    student = build_student(teacher, config(method, init="every_other")).train()
    hp = Hyperparameters(beta=1.0, gamma=1.0)
    pairs = layer_map(TEACHER_LAYERS, 2)
    batch = sample_batch(teacher)
    targets = teacher_targets(teacher.model, batch) if method != "ce" else None
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for _ in range(2):
        parts = student_loss_parts(method, hp, student, batch, targets, pairs)
        assert torch.isfinite(parts.total), parts.terms
        if method in ("gradient_kd", "gradient_kd_cls"):
            assert parts.gradient is not None and "grad" in parts.terms
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family_data")
    return {"train": write_csv(root / "train.csv", sentiment_rows(24, seed=0)),
            "dev": write_csv(root / "dev.csv", sentiment_rows(8, seed=1))}


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_trainer_with_teacher_cache_exports_a_loadable_student(
    teacher_dirs: dict[str, Path], data: dict[str, Path], tmp_path: Path, family: str
):
    run = DistillConfig.parse({
        "method": "gradient_kd_cls", "teacher": str(teacher_dirs[family]),
        "student": {"num_layers": 2, "init": "every_other"},
        "data": {"train": str(data["train"]), "dev": str(data["dev"])},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32,
                            # the fixed schedule: the gradient terms run from step 0 through every family
                            "gradient_start_ratio": 0.0, "gradient_warmup_ratio": 0.0, "accuracy_guard": False},
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
    })
    result = Trainer(run).train()
    assert result.steps == 3 and result.final_dir is not None
    assert list((tmp_path / "cache").iterdir())  # the teacher cache was built and used
    exported = AutoModelForSequenceClassification.from_pretrained(str(result.final_dir))
    assert exported.config.model_type == family
    assert [exported.config.id2label[i] for i in range(2)] == ["negative", "positive"]
    assert exported.config.label2id == {"negative": 0, "positive": 1}
    assert describe_teacher(result.final_dir).num_layers == 2


# ---------------------------------------------------------------- registry facts and refusals
@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_describe_teacher_reports_the_family_facts(teacher_dirs: dict[str, Path], family: str):
    info = describe_teacher(teacher_dirs[family])
    assert (info.family, info.model_type, info.num_layers, info.hidden_size, info.num_attention_heads) == (
        family, family, TEACHER_LAYERS, 32, 4)
    assert info.labels == ["negative", "positive"] and info.task == "text-classification"
    # RoBERTa-style tables reserve pad id + 1 rows (pad 0 here; MPNet's pad id is fixed at 1)
    assert info.max_position_embeddings == {"roberta": 63, "xlm-roberta": 63, "mpnet": 62}.get(family, 64)
    assert info.embedding_size == (16 if family in ("albert", "electra") else 32)
    assert info.num_parameters > 0


def test_gpt2_is_refused_everywhere_with_the_supported_list(tmp_path: Path, data: dict[str, Path]):
    directory = make_tiny_gpt2(tmp_path / "gpt2")
    for call in (check_model_dir, describe_teacher, load_teacher):
        with pytest.raises(ModelError) as info:
            call(directory)
        assert info.value.param == "config.model_type"
        assert "'gpt2' is not supported" in info.value.message
        assert all(f in info.value.message for f in FAMILY_TYPES)
    run = DistillConfig.parse({"method": "kd", "teacher": str(directory), "data": {"train": str(data["train"])},
                               "output_dir": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(ModelError, match="not supported"):  # what `gkd distill` reports
        Trainer(run).train()


@pytest.mark.parametrize("model_type", ["t5", "bart", "llama", "something-new", None])
def test_other_model_types_are_refused(teacher_dirs: dict[str, Path], tmp_path: Path, model_type: str | None):
    directory = tmp_path / "other"
    shutil.copytree(teacher_dirs["bert"], directory)
    raw = json.loads((directory / "config.json").read_text())
    raw.pop("model_type")
    if model_type:
        raw["model_type"] = model_type
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError) as info:
        describe_teacher(directory)
    assert info.value.param == "config.model_type" and "modernbert" in info.value.message


def test_registry_refuses_an_unsupported_family(tmp_path: Path):
    from app.registry import RegistryError, describe

    with pytest.raises(RegistryError) as info:
        describe(make_tiny_gpt2(tmp_path / "gpt2"))
    assert info.value.param == "config.model_type"


# ---------------------------------------------------------------- saliency view and `gkd evaluate`
@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_saliency_and_evaluate_work_for_every_family(teacher_dirs: dict[str, Path], data: dict[str, Path],
                                                     family: str):
    """The dashboard's saliency computation and `gkd evaluate`, with the teacher as its own student: the two
    saliency maps are the same map (cosine 1) and the predictions agree everywhere."""
    from gkd.evaluation.evaluate import evaluate_directory
    from gkd.evaluation.saliency import SaliencyModels, explain

    directory = teacher_dirs[family]
    models = SaliencyModels.load(directory, directory)
    examples = explain(models, ["a good and moving film", "dull"], None, ["positive", None], 16)
    assert [len(e.tokens) for e in examples] == [len(e.teacher) for e in examples] == [len(e.student) for e in
                                                                                       examples]
    assert all(e.agreement == pytest.approx(1.0, abs=1e-4) for e in examples)
    assert all(e.teacher_prediction == e.student_prediction for e in examples)
    metrics = evaluate_directory(directory, data["dev"], teacher_dir=directory, max_length=32)
    assert metrics["examples"] == 8
    assert metrics["teacher_agreement"] == 1.0
    assert metrics["saliency_agreement"] == pytest.approx(1.0, abs=1e-4)
