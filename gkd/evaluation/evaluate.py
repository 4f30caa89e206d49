"""Evaluate a saved checkpoint directory on a data file (`gkd evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from gkd.data.batching import collate, encode, eval_batches
from gkd.data.readers import read_examples
from gkd.evaluation.metrics import EvalAccumulator
from gkd.method.objective import student_saliency_gradients, teacher_targets
from gkd.models.families import model_family
from gkd.models.teacher import check_model_dir, load_teacher, load_tokenizer


def evaluate_directory(
    model_dir: str | Path,
    data_file: str | Path,
    *,
    teacher_dir: str | Path | None = None,
    max_length: int = 128,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Accuracy and macro-F1 of a checkpoint; with a teacher also prediction and saliency agreement."""
    check_model_dir(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="eager")
    model.to(device).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    examples = [e for e in read_examples(data_file).examples if e.text.strip()]
    unknown = sorted({str(e.label) for e in examples} - set(labels))
    if unknown:
        raise ValueError(f"{data_file} has labels {unknown} that the model does not know ({labels})")
    tokenizer = load_tokenizer(model_dir)
    index = {name: i for i, name in enumerate(labels)}
    pairs = [e.text_pair for e in examples] if any(e.text_pair for e in examples) else None
    dataset = encode(tokenizer, [e.text for e in examples], pairs, [index[str(e.label)] for e in examples],
                     max_length)
    teacher = load_teacher(teacher_dir, device=device) if teacher_dir else None
    width = model_family(model).hidden_size(model.config)  # as the trainer picks the form (same width: vector)
    vector_form = teacher is None or width == model_family(teacher.model).hidden_size(teacher.model.config)
    accumulator = EvalAccumulator(len(labels), vector_form=vector_form)
    pad_id = int(tokenizer.pad_token_id or 0)
    for indices in eval_batches(dataset.lengths(), batch_size):
        batch = collate(dataset, indices, pad_id).to(torch.device(device))
        logits, grads = student_saliency_gradients(model, batch)
        targets = teacher_targets(teacher.model, batch) if teacher else None
        accumulator.add(batch, logits, grads, targets)
    return {"examples": len(dataset), **accumulator.result()}
