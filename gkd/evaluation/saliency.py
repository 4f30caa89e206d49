"""Per-token saliency of a trained student next to its teacher's, for a few texts (the dashboard's saliency view).

Saliency is the library's: the gradient of each model's confidence w.r.t. its embedding output
(`gkd.method.objective`), reduced per token and L2-normalised over the sequence (`gkd.method.losses.token_saliency`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from gkd.data.batching import collate, encode
from gkd.method.losses import token_saliency
from gkd.method.objective import student_saliency_gradients, teacher_targets
from gkd.models.student import load_checkpoint
from gkd.models.teacher import load_teacher, load_tokenizer
from gkd.models.vocabulary import teacher_id_lookup


@dataclass(frozen=True)
class SaliencyModels:
    """A teacher, a student checkpoint, and the student's tokenizer. `teacher_ids` maps the student's token ids to
    the teacher's when they differ (a student with a pruned vocabulary, `student.vocabulary: training_data`): both
    models then read the text as the student splits it, the student exactly as it is deployed."""

    teacher: PreTrainedModel
    student: PreTrainedModel
    tokenizer: Any
    teacher_ids: torch.Tensor | None = None  # [student vocabulary] -> teacher id; None: the same ids

    @classmethod
    def load(cls, teacher_dir: str | Path, student_dir: str | Path) -> SaliencyModels:
        student_tokenizer = load_tokenizer(student_dir)
        teacher_ids = teacher_id_lookup(student_tokenizer, load_tokenizer(teacher_dir))
        return cls(load_teacher(teacher_dir).model, load_checkpoint(student_dir), student_tokenizer, teacher_ids)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


@dataclass(frozen=True)
class ExampleSaliency:
    """One text: its tokens, each model's saliency per token (L2-normalised), their predictions and the cosine of
    the two saliency vectors."""

    text: str
    text_pair: str | None
    label: str | None  # the gold label, when the text came with one
    tokens: list[str]
    teacher: list[float]
    student: list[float]
    teacher_prediction: Prediction
    student_prediction: Prediction
    agreement: float


def explain(models: SaliencyModels, texts: Sequence[str], pairs: Sequence[str | None] | None,
            gold: Sequence[str | None], max_length: int) -> list[ExampleSaliency]:
    """Teacher and student saliency of `texts` (with `pairs` for sentence-pair tasks), rounded to 5 digits."""
    teacher, student, tokenizer = models.teacher, models.student, models.tokenizer
    student_config: Any = student.config
    teacher_names: Any = teacher.config.id2label
    labels = [student_config.id2label[i] for i in range(student_config.num_labels)]
    index = {name: i for i, name in enumerate(labels)}
    dataset = encode(tokenizer, texts, pairs, [index.get(str(g), 0) for g in gold], max_length)
    batch = collate(dataset, list(range(len(texts))), int(tokenizer.pad_token_id or 0))
    teacher_batch = batch if models.teacher_ids is None else dataclasses.replace(
        batch, input_ids=models.teacher_ids[batch.input_ids])
    targets = teacher_targets(teacher, teacher_batch)
    logits, grads = student_saliency_gradients(student, batch)
    assert targets.saliency is not None
    teacher_saliency = targets.saliency.float()
    student_saliency = token_saliency(grads, batch.attention_mask).float()
    teacher_probs = torch.softmax(targets.logits.float(), dim=-1)
    student_probs = torch.softmax(logits.float(), dim=-1)
    out = []
    for row in range(len(texts)):
        n = len(dataset.input_ids[row])
        t, s = teacher_saliency[row, :n], student_saliency[row, :n]
        cosine = float((t * s).sum() / (t.norm() * s.norm()).clamp_min(1e-12))
        tp, sp = teacher_probs[row], student_probs[row]
        out.append(ExampleSaliency(
            text=texts[row],
            text_pair=pairs[row] if pairs else None,
            label=gold[row],
            tokens=tokenizer.convert_ids_to_tokens(dataset.input_ids[row]),
            teacher=[round(float(v), 5) for v in t],
            student=[round(float(v), 5) for v in s],
            teacher_prediction=Prediction(str(teacher_names[int(tp.argmax())]), round(float(tp.max()), 5)),
            student_prediction=Prediction(labels[int(sp.argmax())], round(float(sp.max()), 5)),
            agreement=round(cosine, 5),
        ))
    return out
