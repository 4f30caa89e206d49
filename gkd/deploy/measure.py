"""Accuracy and speed of any `Predictor` on labelled data, measured the same way for PyTorch and ONNX.

Speed is ms per example at batch 1 (the median over single-example calls, after warm-up: an online request) and
examples per second at batch 32 (consecutive rows in file order, each batch padded to its longest row: offline
scoring). Both use the process's threads as they are set; compare runtimes in one process, one after another.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gkd.data.batching import EncodedDataset, encode_examples
from gkd.data.readers import Example
from gkd.deploy.feeds import batches_of, pad_batch
from gkd.deploy.predictors import Predictor, directory_size
from gkd.evaluation.metrics import accuracy_f1

LATENCY_BATCH = 1
THROUGHPUT_BATCH = 32


def encode_for(predictor: Predictor, examples: Sequence[Example], max_length: int) -> EncodedDataset:
    """The labelled rows tokenised by the predictor's own tokenizer, label ids in its label order."""
    unknown = sorted({str(e.label) for e in examples if e.label is not None} - set(predictor.labels))
    if unknown:
        raise ValueError(f"the data has labels {unknown} that {predictor.name} does not know ({predictor.labels})")
    return encode_examples(predictor.tokenizer, examples, predictor.labels, max_length)


def pad_id(predictor: Predictor) -> int:
    return int(predictor.tokenizer.pad_token_id or 0)


def predict(predictor: Predictor, dataset: EncodedDataset, batch_size: int = 64) -> np.ndarray:
    """Logits of every row, in data order."""
    out = [predictor.logits(b) for b in batches_of(dataset, batch_size, pad_id(predictor))]
    return np.concatenate(out) if out else np.zeros((0, len(predictor.labels)), dtype=np.float32)


def latency_ms(predictor: Predictor, dataset: EncodedDataset, examples: int = 100, warmup: int = 5) -> float:
    """Median milliseconds of one call on one example (the first `examples` rows; `warmup` calls first)."""
    n = min(examples, len(dataset))
    if n == 0:
        return float("nan")
    pad = pad_id(predictor)
    for i in range(min(warmup, n)):
        predictor.logits(pad_batch(dataset, [i], pad))
    times = []
    for i in range(n):
        batch = pad_batch(dataset, [i], pad)
        start = time.perf_counter()
        predictor.logits(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def throughput(predictor: Predictor, dataset: EncodedDataset, examples: int = 256,
               batch_size: int = THROUGHPUT_BATCH) -> float:
    """Examples per second over the first `examples` rows in batches of `batch_size` (one warm-up batch first)."""
    n = min(examples, len(dataset))
    if n == 0:
        return float("nan")
    pad = pad_id(predictor)
    batches = [pad_batch(dataset, list(range(s, min(s + batch_size, n))), pad) for s in range(0, n, batch_size)]
    predictor.logits(batches[0])
    start = time.perf_counter()
    for batch in batches:
        predictor.logits(batch)
    return n / (time.perf_counter() - start)


def timed(predictors: Sequence[Predictor], datasets: Sequence[EncodedDataset], *, repeats: int,
          latency_examples: int, throughput_examples: int) -> list[dict[str, Any]]:
    """Median latency (batch 1) and throughput (batch 32) per predictor over `repeats` round-robin rounds, so that
    a slow moment of the machine falls on every predictor alike; each round's figures are kept too."""
    latency: list[list[float]] = [[] for _ in predictors]
    rate: list[list[float]] = [[] for _ in predictors]
    for _ in range(repeats):
        for i, (predictor, dataset) in enumerate(zip(predictors, datasets, strict=True)):
            latency[i].append(latency_ms(predictor, dataset, latency_examples))
            rate[i].append(throughput(predictor, dataset, throughput_examples))
    return [{"ms_per_example_batch1": statistics.median(latency[i]),
             "examples_per_second_batch32": statistics.median(rate[i]),
             "ms_per_example_batch1_all": latency[i], "examples_per_second_batch32_all": rate[i]}
            for i in range(len(predictors))]


def quality(logits: np.ndarray, dataset: EncodedDataset, num_labels: int) -> dict[str, float]:
    return accuracy_f1(logits.argmax(-1), np.asarray(dataset.labels), num_labels)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows where two sets of logits predict the same label."""
    return float(np.mean(a.argmax(-1) == b.argmax(-1))) if len(a) else float("nan")


def label_names(predictor: Predictor, logits: np.ndarray) -> np.ndarray:
    """Predicted label names (models may order their labels differently)."""
    return np.asarray(predictor.labels)[logits.argmax(-1)] if len(logits) else np.zeros(0, dtype=str)


def compare(predictors: Sequence[Predictor], examples: Sequence[Example], *, max_length: int = 128,
            latency_examples: int = 100, throughput_examples: int = 256,
            reference: Predictor | None = None) -> list[dict[str, Any]]:
    """One row per predictor: accuracy, macro-F1, size, ms/example at batch 1, examples/s at batch 32; with a
    `reference` (the teacher) also the share of predictions that agree with it."""
    kept = [e for e in examples if e.text.strip() and e.label is not None]
    reference_names = None
    if reference is not None:
        reference_names = label_names(reference, predict(reference, encode_for(reference, kept, max_length)))
    rows = []
    for predictor in predictors:
        dataset = encode_for(predictor, kept, max_length)
        logits = predict(predictor, dataset)
        row: dict[str, Any] = {
            "model": predictor.name,
            "runtime": predictor.runtime,
            "directory": str(predictor.directory),
            "examples": len(dataset),
            **quality(logits, dataset, len(predictor.labels)),
            "size_bytes": directory_size(Path(predictor.directory)),
            "ms_per_example_batch1": latency_ms(predictor, dataset, latency_examples),
            "examples_per_second_batch32": throughput(predictor, dataset, throughput_examples),
        }
        if reference_names is not None:
            row["teacher_agreement"] = float(np.mean(label_names(predictor, logits) == reference_names))
        rows.append(row)
    return rows
