"""Evaluating a model on encoded data (the trainer's dev and test evaluations), and a saved checkpoint
directory on a data file (`gkd evaluate`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from gkd.data.batching import Batch, EncodedDataset, collate, encode_examples, eval_batches
from gkd.data.readers import read_examples
from gkd.evaluation.metrics import EvalAccumulator
from gkd.method.objective import TeacherTargets, student_saliency_gradients, teacher_targets
from gkd.models.families import model_family
from gkd.models.student import load_checkpoint
from gkd.models.teacher import check_model_dir, load_teacher, load_tokenizer
from gkd.models.vocabulary import teacher_id_lookup
from gkd.training.memory_estimate import EVAL_BATCH_SIZE

TargetsOf = Callable[[Batch], TeacherTargets]


def evaluate_model(
    model: PreTrainedModel,
    dataset: EncodedDataset,
    labels: list[str],
    *,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    targets: TargetsOf | None = None,
    vector_form: bool = True,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, float]:
    """Accuracy, macro-F1 and, with teacher `targets` for a batch, teacher agreement and saliency agreement."""
    model.eval()
    accumulator = EvalAccumulator(num_labels=len(labels), vector_form=vector_form)
    for indices in eval_batches(dataset.lengths(), batch_size):
        batch = collate(dataset, indices, pad_id).to(torch.device(device))
        logits, grads = student_saliency_gradients(model, batch)
        accumulator.add(batch, logits, grads, targets(batch) if targets is not None else None)
    return accumulator.result()


def evaluate_directory(
    model_dir: str | Path,
    data_file: str | Path,
    *,
    teacher_dir: str | Path | None = None,
    max_length: int = 128,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "cpu",
) -> dict[str, Any]:
    """Accuracy and macro-F1 of a checkpoint; with a teacher also prediction and saliency agreement."""
    check_model_dir(model_dir)
    model = load_checkpoint(model_dir, device)
    model_config: Any = model.config
    labels = [model_config.id2label[i] for i in range(model_config.num_labels)]
    examples = [e for e in read_examples(data_file).examples if e.text.strip()]
    unknown = sorted({str(e.label) for e in examples} - set(labels))
    if unknown:
        raise ValueError(f"{data_file} has labels {unknown} that the model does not know ({labels})")
    tokenizer = load_tokenizer(model_dir)
    dataset = encode_examples(tokenizer, examples, labels, max_length)
    teacher = load_teacher(teacher_dir, device=device) if teacher_dir else None
    # a student with a pruned vocabulary: the teacher reads the same tokens in its own ids
    lookup = teacher_id_lookup(tokenizer, teacher.tokenizer) if teacher is not None else None

    def as_teacher_batch(batch: Batch) -> Batch:
        if lookup is None:
            return batch
        return dataclasses.replace(batch, input_ids=lookup.to(batch.input_ids.device)[batch.input_ids])

    width = model_family(model).hidden_size(model.config)  # as the trainer picks the form (same width: vector)
    vector_form = teacher is None or width == model_family(teacher.model).hidden_size(teacher.model.config)
    metrics = evaluate_model(
        model, dataset, labels, device=device, pad_id=int(tokenizer.pad_token_id or 0), batch_size=batch_size,
        targets=(lambda batch: teacher_targets(teacher.model, as_teacher_batch(batch))) if teacher else None,
        vector_form=vector_form,
    )
    return {"examples": len(dataset), **metrics}
