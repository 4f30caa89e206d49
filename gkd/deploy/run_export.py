"""The deployable artefacts a run asks for with `export` (DistillConfig.export, the job body's `export`): the best
student as ONNX (`best-onnx`) and int8 ONNX (`best-onnx-int8`), each verified on the dev sample and measured on the
dev set, the figures in its gkd_card.json `metrics` (the worker reads a checkpoint's metrics from there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gkd.data.batching import EncodedDataset
from gkd.deploy.measure import agreement, latency_ms, predict, quality, throughput
from gkd.deploy.onnx_export import SAMPLE_SIZE, export_onnx, update_card
from gkd.deploy.predictors import OnnxPredictor, TorchPredictor, directory_size

# export format -> (checkpoint kind, quantisation)
EXPORT_KINDS: dict[str, tuple[str, str | None]] = {"onnx": ("best-onnx", None), "onnx-int8": ("best-onnx-int8", "int8")}
# Timing in a job is a sample, so that an export adds seconds, not minutes, to a run on a busy CPU worker.
LATENCY_EXAMPLES = 50
THROUGHPUT_EXAMPLES = 256


def _subset(dataset: EncodedDataset, n: int) -> EncodedDataset:
    return EncodedDataset(dataset.input_ids[:n], dataset.token_type_ids[:n], dataset.labels[:n])


def export_best(best_dir: Path, output_dir: Path, formats: list[str], dev: EncodedDataset | None,
                teacher_predictions: np.ndarray | None = None) -> list[tuple[str, Path]]:
    """Export `best_dir` once per format into `output_dir/<kind>`; returns (kind, directory) in `formats` order.

    `dev` is the run's dev set, tokenised with the student's own tokenizer (labels as ids in its label order);
    `teacher_predictions` the teacher's predicted label ids for the same rows."""
    student = TorchPredictor(best_dir, name="pytorch")
    student_logits = predict(student, dev) if dev is not None and len(dev) else None
    out = []
    for fmt in formats:
        kind, quantize = EXPORT_KINDS[fmt]
        directory = output_dir / kind
        sample = _subset(dev, SAMPLE_SIZE) if dev is not None and len(dev) else None
        card = export_onnx(best_dir, directory, quantize="int8" if quantize else None, sample=sample,
                           extra_card={"checkpoint": kind})
        metrics: dict[str, Any] = {"verification_" + k: v for k, v in card["verification"].items()
                                   if k in ("max_abs_logit_diff", "label_agreement")}
        predictor = OnnxPredictor(directory)
        if dev is not None and len(dev) and student_logits is not None:
            logits = predict(predictor, dev)
            metrics |= quality(logits, dev, len(predictor.labels))
            metrics["student_agreement"] = agreement(logits, student_logits)
            if teacher_predictions is not None and len(teacher_predictions) == len(dev):
                metrics["teacher_agreement"] = float(np.mean(logits.argmax(-1) == teacher_predictions))
            metrics["ms_per_example_batch1"] = latency_ms(predictor, dev, LATENCY_EXAMPLES)
            metrics["examples_per_second_batch32"] = throughput(predictor, dev, THROUGHPUT_EXAMPLES)
        metrics["size_bytes"] = directory_size(directory)
        update_card(directory, {"metrics": metrics, "measured_on": "dev" if dev is not None else None})
        out.append((kind, directory))
    return out
