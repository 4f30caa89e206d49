"""Evaluation metrics: accuracy, macro-F1, agreement with the teacher's predictions and saliency.

Saliency agreement is the quantity Gradient KD optimises: the mean cosine between teacher and student
per-token input gradients over real tokens (vector form, equal widths) or between their normalised
per-token saliency vectors (scalar form, any width), plus the overlap of their top-3 tokens.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from gkd.data.batching import Batch
from gkd.method import losses
from gkd.method.objective import TeacherTargets

TOP_K = 3


def accuracy_f1(predictions: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (labels absent from both gold and predictions are skipped)."""
    predictions = np.asarray(predictions)
    gold = np.asarray(gold)
    if gold.size == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    f1s = []
    for label in range(num_labels):
        tp = int(np.sum((predictions == label) & (gold == label)))
        fp = int(np.sum((predictions == label) & (gold != label)))
        fn = int(np.sum((predictions != label) & (gold == label)))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == gold)), "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


class EvalAccumulator:
    """Collects per-batch predictions and saliency statistics; `result()` gives the metrics."""

    def __init__(self, num_labels: int, vector_form: bool = True) -> None:
        self.num_labels = num_labels
        self.vector_form = vector_form
        self.predictions: list[np.ndarray] = []
        self.gold: list[np.ndarray] = []
        self.teacher_predictions: list[np.ndarray] = []
        self.cosine_sum = 0.0
        self.cosine_weight = 0.0
        self.topk_sum = 0.0
        self.topk_count = 0

    def add(self, batch: Batch, logits: Tensor, grads: Tensor, targets: TeacherTargets | None) -> None:
        self.predictions.append(logits.argmax(dim=-1).cpu().numpy())
        self.gold.append(batch.labels.cpu().numpy())
        if targets is None:
            return
        self.teacher_predictions.append(targets.logits.argmax(dim=-1).cpu().numpy())
        mask = batch.attention_mask
        student_saliency = losses.token_saliency(grads, mask)
        if self.vector_form and targets.unit_gradients is not None:
            tokens = float(mask.sum())
            cosine = losses.cosine_agreement(targets.unit_gradients, grads, mask)
            self.cosine_sum += float(cosine) * tokens
            self.cosine_weight += tokens
        elif targets.saliency is not None:
            per_example = (targets.saliency.float() * student_saliency).sum(dim=-1)
            self.cosine_sum += float(per_example.sum())
            self.cosine_weight += float(per_example.numel())
        if targets.saliency is not None:
            overlap = losses.topk_overlap(targets.saliency, student_saliency, mask, TOP_K)
            self.topk_sum += float(overlap) * batch.size
            self.topk_count += batch.size

    def result(self) -> dict[str, float]:
        predictions = np.concatenate(self.predictions) if self.predictions else np.zeros(0, dtype=np.int64)
        gold = np.concatenate(self.gold) if self.gold else np.zeros(0, dtype=np.int64)
        metrics = accuracy_f1(predictions, gold, self.num_labels)
        if self.teacher_predictions:
            teacher = np.concatenate(self.teacher_predictions)
            metrics["teacher_agreement"] = float(np.mean(teacher == predictions))
        if self.cosine_weight:
            metrics["saliency_agreement"] = self.cosine_sum / self.cosine_weight
        if self.topk_count:
            metrics[f"saliency_top{TOP_K}_overlap"] = self.topk_sum / self.topk_count
        return metrics

