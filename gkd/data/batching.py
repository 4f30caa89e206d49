"""Tokenised datasets and the order batches are drawn in.

The order of an epoch is a pure function of (seed, epoch), so a resumed run replays exactly the batches
an uninterrupted one would have seen, without storing the permutation. Length bucketing (on by
default) sorts examples by length inside large random chunks and then shuffles the batches, which
cuts padding (and so time) without making batches predictable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gkd.data.readers import Example

BUCKET_CHUNK_BATCHES = 50


@dataclass
class Batch:
    """Right-padded tensors of some examples of an `EncodedDataset` (`collate`)."""

    input_ids: Tensor  # [B, L]
    attention_mask: Tensor  # [B, L]
    token_type_ids: Tensor  # [B, L]
    labels: Tensor  # [B]
    indices: Tensor  # [B] positions in the dataset (cache rows)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (
            self.input_ids, self.attention_mask, self.token_type_ids, self.labels, self.indices
        )))

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class EncodedDataset:
    """Token ids without padding; labels as ids in the teacher's label order. `pad_to` pads every batch to at least
    that many columns (fixed shapes, as tokenising with padding="max_length" gives); by default a batch is as wide
    as its longest row."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]
    pad_to: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def fingerprint_arrays(self) -> list[np.ndarray]:
        """Arrays that identify the tokenisation (for cache keys)."""
        flat = np.fromiter((t for ids in self.input_ids for t in ids), dtype=np.int64)
        types = np.fromiter((t for ids in self.token_type_ids for t in ids), dtype=np.int64)
        return [self.lengths(), flat, types]


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None,
    labels: Sequence[int],
    max_length: int,
) -> EncodedDataset:
    """Tokenise with truncation to `max_length`; no padding (batches pad to their own longest row)."""
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length, "padding": False}
    if pairs is not None and any(p is not None for p in pairs):
        encoded = tokenizer(list(texts), [p or "" for p in pairs], **kwargs)
    else:
        encoded = tokenizer(list(texts), **kwargs)
    input_ids = [list(ids) for ids in encoded["input_ids"]]
    type_ids = encoded.get("token_type_ids") or [[0] * len(ids) for ids in input_ids]
    return EncodedDataset(input_ids, [list(t) for t in type_ids], list(labels))


def encode_examples(tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
                    max_length: int) -> EncodedDataset:
    """The labelled, non-empty examples tokenised, with label ids in the order of `labels` (a run's label order)."""
    index = {name: i for i, name in enumerate(labels)}
    kept = [e for e in examples if e.text.strip() and e.label is not None]
    pairs = [e.text_pair for e in kept] if any(e.text_pair for e in kept) else None
    return encode(tokenizer, [e.text for e in kept], pairs, [index[str(e.label)] for e in kept], max_length)


def collate(dataset: EncodedDataset, indices: Sequence[int], pad_id: int = 0) -> Batch:
    """Right-padded tensors for the examples at `indices`."""
    width = max(max(len(dataset.input_ids[i]) for i in indices), dataset.pad_to or 0)
    size = len(indices)
    input_ids = torch.full((size, width), pad_id, dtype=torch.long)
    type_ids = torch.zeros((size, width), dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for row, index in enumerate(indices):
        ids = dataset.input_ids[index]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        type_ids[row, : len(ids)] = torch.tensor(dataset.token_type_ids[index])
        mask[row, : len(ids)] = 1
    labels = torch.tensor([dataset.labels[i] for i in indices], dtype=torch.long)
    return Batch(input_ids, mask, type_ids, labels, torch.tensor(list(indices), dtype=torch.long))


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, *, bucketing: bool = True
) -> list[list[int]]:
    """The batches of one training epoch, deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucketing:
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    chunk = batch_size * BUCKET_CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size))
    shuffled = rng.permutation(len(batches))
    return [batches[i] for i in shuffled]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (order does not matter for metrics; padding does for time)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
