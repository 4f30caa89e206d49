"""What exporter, predictors and measurements share: the ONNX file's name, the graph's inputs for a model family,
and right-padded numpy batches in data order (ONNX Runtime and PyTorch take the same arrays)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gkd.data.batching import EncodedDataset

ONNX_FILE = "model.onnx"
Feeds = dict[str, np.ndarray]


def is_onnx_dir(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def input_names(model: Any) -> list[str]:
    """The graph's inputs: token_type_ids only where the family reads them (as the trainer feeds them)."""
    from gkd.models.families import model_family

    names = ["input_ids", "attention_mask"]
    if model_family(model).takes_token_types(model.config):
        names.append("token_type_ids")
    return names


def pad_batch(dataset: EncodedDataset, indices: list[int], pad_id: int) -> Feeds:
    """Right-padded int64 arrays of some rows."""
    width = max(len(dataset.input_ids[i]) for i in indices)
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, index in enumerate(indices):
        n = len(dataset.input_ids[index])
        ids[row, :n] = dataset.input_ids[index]
        types[row, :n] = dataset.token_type_ids[index]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def batches_of(dataset: EncodedDataset, batch_size: int, pad_id: int) -> Iterator[Feeds]:
    """The rows in order, `batch_size` at a time (order kept, so results line up with the data)."""
    for start in range(0, len(dataset), batch_size):
        yield pad_batch(dataset, list(range(start, min(start + batch_size, len(dataset)))), pad_id)


def select(batch: Feeds, names: list[str]) -> Feeds:
    return {name: batch[name] for name in names}


def onnx_logits(session: Any, dataset: EncodedDataset, pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Logits of every row from an ONNX Runtime session, in data order."""
    names = [i.name for i in session.get_inputs()]
    out = [session.run(["logits"], select(b, names))[0] for b in batches_of(dataset, batch_size, pad_id)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)
