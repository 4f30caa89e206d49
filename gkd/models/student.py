"""Students cut from a teacher's layers (GKD.md, 'Student initialisation'), started from another pretrained
encoder that shares the teacher's tokenizer, or continued from an earlier run's checkpoint (`continue_student`).
Family-specific key layouts come from `gkd.models.families`.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from gkd.config import (
    ConfigError,
    DistillConfig,
    InitFromCheckpoint,
    InitFromModel,
    InitStrategy,
    LayerRule,
    StudentSpec,
)
from gkd.export.checkpoint import read_card
from gkd.method.properties import method_properties
from gkd.models.families import ModelError, embedding_module, model_family
from gkd.models.teacher import Teacher, freeze, load_teacher


def select_layers(rule: LayerRule | InitStrategy, num_layers: int, available: int, *, source: str = "the teacher",
                  param: str = "student.init") -> list[int] | None:
    """0-based layers of the source model (the teacher, or `student.init.model`) that initialise student layers
    0..N-1; None for a fresh encoder ('random')."""
    if num_layers > available:
        raise ConfigError(f"the student has {num_layers} layers but {source} only {available}", "student.num_layers")
    if isinstance(rule, list):
        bad = [i for i in rule if i >= available]
        if bad:
            raise ConfigError(
                f"layer(s) {bad} do not exist; {source} has layers 0..{available - 1}", param
            )
        return list(rule)
    if rule == "bottom":
        return list(range(num_layers))
    if rule == "every_other":
        step = available / num_layers
        return [int(k * step) for k in range(num_layers)]
    return None  # random


def select_teacher_layers(spec: StudentSpec, teacher_layers: int) -> list[int] | None:
    """0-based teacher layers that initialise student layers 0..N-1; None for a fresh encoder."""
    assert not isinstance(spec.init, InitFromModel | InitFromCheckpoint), "a student from init.model or " \
        "init.checkpoint takes its layers from that model"
    return select_layers(spec.init, spec.num_layers, teacher_layers)


def check_same_tokenizer(teacher: Any, other: Any, param: str = "student.init.model") -> None:
    """A student reads the teacher's token ids: its starting model must have the same vocabulary and the same
    special tokens, or every id means another word."""
    ours, theirs = teacher.get_vocab(), other.get_vocab()
    if ours != theirs:
        differing = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])[:3]
        raise ModelError(
            f"the starting model's tokenizer differs from the teacher's ({len(theirs)} tokens against "
            f"{len(ours)}; first differences: {differing}): the student must read the teacher's token ids",
            param,
        )
    specials = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")
    mismatched = [name for name in specials if getattr(teacher, name, None) != getattr(other, name, None)]
    if mismatched:
        raise ModelError(f"the starting model's special tokens differ from the teacher's: {mismatched}", param)


def load_student_base(path: str | Path, teacher: Teacher) -> Teacher:
    """`student.init.model`: another encoder of a supported family with the teacher's tokenizer, loaded with a
    fresh classification head for the teacher's labels."""
    base = load_teacher(path, labels=teacher.labels)
    check_same_tokenizer(teacher.tokenizer, base.tokenizer)
    return base


def _student_config(
    teacher: PreTrainedModel, spec: StudentSpec, dropout: float, layers: list[int] | None = None
) -> Any:
    """The teacher's config cut to the student: depth, per-layer lists, every dropout, width, eager attention."""
    family = model_family(teacher)
    config = copy.deepcopy(teacher.config)
    family.cut_config(config, layers, spec.num_layers, dropout)
    if spec.hidden_size is not None and spec.hidden_size != family.hidden_size(teacher.config):
        family.resize(config, spec.hidden_size, family.num_heads(teacher.config))
    config._attn_implementation = "eager"
    return config


def build_student(teacher: Teacher, config: DistillConfig, base: Teacher | None = None) -> PreTrainedModel:
    """A student of `config.student.num_layers` layers cut from the teacher (GKD.md, 'Student initialisation'), or
    from another pretrained encoder (`student.init.model`, passed loaded as `base` or read from its path).

    Embeddings are copied from the source model (and trained, unless `student.embeddings` is 'frozen'); the chosen
    encoder layers are copied; pooler and classifier come from the teacher or start fresh (`student.head`; always
    fresh from another encoder, whose head never saw the teacher's labels). A different width starts everything
    fresh.
    """
    spec = config.student
    if spec.init_checkpoint is not None:
        raise ConfigError("a student continued from init.checkpoint is loaded by continue_student", "student.init")
    if isinstance(spec.init, InitFromModel) and base is None:
        base = load_student_base(spec.init.model, teacher)
    source = base.model if base is not None else teacher.model
    family = model_family(source)
    if isinstance(spec.init, InitFromModel):
        layers = select_layers(spec.init.layers, spec.num_layers, family.num_layers(source.config),
                               source=f"{spec.init.model}", param="student.init.layers")
        teacher_width = model_family(teacher.model).hidden_size(teacher.model.config)
        if method_properties(config.method).needs_teacher_width and family.hidden_size(source.config) != teacher_width:
            raise ConfigError(
                f"{config.method} compares hidden states and needs the teacher's width ({teacher_width}); "
                f"{spec.init.model} is {family.hidden_size(source.config)} wide: use gradient_kd or kd",
                "student.init.model",
            )
    else:
        layers = select_teacher_layers(spec, family.num_layers(source.config))
    student_config = _student_config(source, spec, spec.dropout, layers)
    torch.manual_seed(config.hyperparameters.seed)
    random.seed(config.hyperparameters.seed)
    student = AutoModelForSequenceClassification.from_config(student_config, attn_implementation="eager")
    same_width = family.hidden_size(student_config) == family.hidden_size(source.config)
    if same_width:
        copy_teacher_weights(source, student, layers, head=spec.head == "teacher" and base is None)
        if spec.embeddings == "frozen":
            freeze(embedding_module(student))
    return student


def copy_teacher_weights(
    teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int] | None, *, head: bool = False
) -> None:
    """Copy embeddings, encoder layer `layers[j]` into student layer j (none when `layers` is None) and,
    with `head`, the pooler and classifier. Key layouts come from the family (`gkd.models.families`)."""
    family = model_family(teacher)
    source = teacher.state_dict()
    target = student.state_dict()
    update: dict[str, torch.Tensor] = {}
    for key in target:
        if not head and family.is_head(key):
            continue
        source_key = family.teacher_key(key, layers, teacher.config)
        if source_key is not None and source_key in source and source[source_key].shape == target[key].shape:
            update[key] = source[source_key].detach().clone()
    student.load_state_dict(update, strict=False)


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> PreTrainedModel:
    """A trained student (an exported checkpoint directory) for evaluation: safetensors only, no remote code, eager
    attention (its input gradients are differentiated), in eval mode."""
    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )
    return model.to(device).eval()


def continue_student(teacher: Teacher, config: DistillConfig, labels: list[str]) -> PreTrainedModel:
    """`student.init.checkpoint`: an exported student (safetensors, no remote code) trained on, with all its layers,
    weights and head. It must read the teacher's token ids, have `student.num_layers` layers and the run's labels
    in the same order (its head's rows are those labels); its width and dropout are its own."""
    spec = config.student
    directory = spec.init_checkpoint
    assert directory is not None
    param = "student.init.checkpoint"
    if not (Path(directory) / "config.json").is_file():
        raise ConfigError(f"{directory} is not an exported student directory (no config.json)", param)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )
    if "vocabulary" in read_card(directory):
        raise ConfigError(f"{directory} was exported with a pruned vocabulary (student.vocabulary 'training_data'): "
                          "it no longer reads the teacher's token ids; continue from a checkpoint of a run with "
                          "student.vocabulary 'full'", param)
    check_same_tokenizer(teacher.tokenizer, AutoTokenizer.from_pretrained(str(directory)), param)
    family = model_family(model)
    depth = family.num_layers(model.config)
    if depth != spec.num_layers:
        raise ConfigError(f"the checkpoint has {depth} layers and student.num_layers is {spec.num_layers}; "
                          f"set num_layers to {depth}", "student.num_layers")
    theirs = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    if theirs != list(labels):
        raise ConfigError(f"the checkpoint predicts the labels {theirs} and this run has {list(labels)}: "
                          "continue only with the teacher and labels it was trained for", param)
    teacher_width = model_family(teacher.model).hidden_size(teacher.model.config)
    if method_properties(config.method).needs_teacher_width and family.hidden_size(model.config) != teacher_width:
        raise ConfigError(f"{config.method} compares hidden states and needs the teacher's width ({teacher_width}); "
                          f"the checkpoint is {family.hidden_size(model.config)} wide: use gradient_kd or kd", param)
    if spec.embeddings == "frozen":
        freeze(embedding_module(model))
    return model.train()
