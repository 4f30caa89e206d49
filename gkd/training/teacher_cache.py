"""Teacher outputs computed once per (teacher, tokenised dataset) and memory-mapped from disk.

The teacher is frozen and deterministic in eval mode, so its logits, [CLS] states and unit input
gradients depend only on the tokenised example (GKD.md). Storing them (fp16, real tokens only) removes
the teacher's forward *and backward* pass from every training step of every epoch and every job
that trains on the same data with the same teacher.

Layout of one cache directory (named by its key):
  meta.json            key material and shapes
  logits.npy           [N, C] float32
  offsets.npy          [N + 1] int64 start of each example's tokens in the flat arrays
  unit_grads.npy       [T, E] float16 unit per-token input gradients (T = real tokens in total, E the
                       embedding width: H for most families, embedding_size for ALBERT and ELECTRA)
  saliency.npy       [T] float32 per-token saliency, L2-normalised per example (width-independent form)
  cls_states.npy       [N, M+1, H] float16 [CLS] vector of every hidden_states entry
  cls_unit_grads.npy   [N, M+1, H] float16 unit gradients at [CLS] per hidden_states entry
A cache is written into a temporary sibling directory and renamed into place, so a reader never
sees half a cache; any change of teacher weights, tokenisation, data or max length changes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from gkd.data.batching import Batch, EncodedDataset, collate, eval_batches
from gkd.method import losses
from gkd.method.objective import TeacherTargets, teacher_targets
from gkd.models.families import model_family
from gkd.training.memory_estimate import CACHE_BATCH_SIZE

CACHE_FORMAT_VERSION = 1
ARRAYS = ("logits", "offsets", "unit_grads", "saliency", "cls_states", "cls_unit_grads")


def teacher_fingerprint(teacher_dir: str | Path) -> str:
    """sha256 over the teacher's config and weights (the files that decide its outputs)."""
    digest = hashlib.sha256()
    root = Path(teacher_dir)
    for name in sorted(p.name for p in root.iterdir() if p.suffix in (".json", ".safetensors")):
        if name.startswith("gkd_card"):
            continue
        digest.update(name.encode())
        with (root / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_key(teacher_print: str, dataset: EncodedDataset, max_length: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{teacher_print}|{max_length}|".encode())
    for array in dataset.fingerprint_arrays():
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:32]


@dataclass
class TeacherCache:
    """Read-only, memory-mapped teacher outputs; `targets(batch)` rebuilds padded tensors."""

    path: Path
    logits: np.ndarray
    offsets: np.ndarray
    unit_grads: np.ndarray
    saliency: np.ndarray
    cls_states: np.ndarray
    cls_unit_grads: np.ndarray

    @classmethod
    def open(cls, path: Path) -> TeacherCache:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        return cls(path=path, **arrays)

    def targets(self, batch: Batch, device: torch.device | str = "cpu") -> TeacherTargets:
        """Teacher targets for a right-padded batch, gathered without per-token Python loops."""
        rows = batch.indices.cpu().numpy()
        mask = batch.attention_mask.cpu().bool()
        token_index = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows])
        width = mask.shape[1]
        hidden = self.unit_grads.shape[1]
        unit = torch.zeros((len(rows), width, hidden), dtype=torch.float32)
        unit[mask] = torch.from_numpy(np.asarray(self.unit_grads[token_index], dtype=np.float32))
        norms = torch.zeros((len(rows), width), dtype=torch.float32)
        norms[mask] = torch.from_numpy(np.asarray(self.saliency[token_index], dtype=np.float32))
        saliency = norms / norms.norm(dim=-1, keepdim=True).clamp_min(losses.EPS)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(array[rows], dtype=np.float32)).to(device)

        return TeacherTargets(
            logits=tensor(self.logits),
            unit_gradients=unit.to(device),
            saliency=saliency.to(device),
            cls_states=tensor(self.cls_states),
            cls_unit_gradients=tensor(self.cls_unit_grads),
        )


def build_cache(
    teacher: PreTrainedModel,
    dataset: EncodedDataset,
    directory: Path,
    *,
    batch_size: int = CACHE_BATCH_SIZE,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    meta: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherCache:
    """Run the teacher once over `dataset` and write the cache atomically to `directory`."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        lengths = dataset.lengths()
        offsets = np.zeros(len(dataset) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = int(offsets[-1])
        family = model_family(teacher)
        hidden = family.hidden_size(teacher.config)
        embedding = family.embedding_size(teacher.config)  # E's width: ALBERT/ELECTRA embed narrower than hidden
        layers = family.num_layers(teacher.config) + 1
        classes = int(teacher.config.num_labels or 0)
        out = {
            "logits": np.lib.format.open_memmap(tmp / "logits.npy", "w+", np.float32, (len(dataset), classes)),
            "unit_grads": np.lib.format.open_memmap(tmp / "unit_grads.npy", "w+", np.float16, (tokens, embedding)),
            "saliency": np.lib.format.open_memmap(tmp / "saliency.npy", "w+", np.float32, (tokens,)),
            "cls_states": np.lib.format.open_memmap(
                tmp / "cls_states.npy", "w+", np.float16, (len(dataset), layers, hidden)
            ),
            "cls_unit_grads": np.lib.format.open_memmap(
                tmp / "cls_unit_grads.npy", "w+", np.float16, (len(dataset), layers, hidden)
            ),
        }
        np.save(tmp / "offsets.npy", offsets)
        batches = eval_batches(lengths, batch_size)
        for done, indices in enumerate(batches, start=1):
            batch = collate(dataset, indices, pad_id).to(torch.device(device))
            _write_batch(out, offsets, teacher, batch)
            if progress:
                progress(done, len(batches))
        for array in out.values():
            array.flush()
        del out
        info = {"format": CACHE_FORMAT_VERSION, "examples": len(dataset), "tokens": tokens,
                "hidden_size": hidden, "layers": layers, "classes": classes, **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "meta.json").is_file():  # another writer lost half a cache? never: rename is atomic
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent job finished the same cache first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TeacherCache.open(directory)


def _write_batch(out: Mapping[str, np.ndarray], offsets: np.ndarray, teacher: PreTrainedModel, batch: Batch) -> None:
    targets = teacher_targets(teacher, batch)
    assert targets.unit_gradients is not None and targets.cls_states is not None
    assert targets.cls_unit_gradients is not None
    rows = batch.indices.cpu().numpy()
    mask = batch.attention_mask.bool()
    out["logits"][rows] = targets.logits.cpu().numpy()
    out["cls_states"][rows] = targets.cls_states.cpu().numpy().astype(np.float16)
    out["cls_unit_grads"][rows] = targets.cls_unit_gradients.cpu().numpy().astype(np.float16)
    token_index = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
    out["unit_grads"][token_index] = targets.unit_gradients[mask].cpu().numpy().astype(np.float16)
    assert targets.saliency is not None
    out["saliency"][token_index] = targets.saliency[mask].cpu().numpy()


def open_or_build(
    teacher: PreTrainedModel,
    teacher_dir: str | Path,
    dataset: EncodedDataset,
    cache_root: str | Path,
    max_length: int,
    *,
    refresh: bool = False,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
    fingerprint: str | None = None,
) -> tuple[TeacherCache, bool]:
    """The cache for this teacher and dataset, built if missing (or if `refresh`); returns (cache, built).

    `fingerprint` (of `teacher_dir`) may be passed in to hash the weights once for several datasets."""
    key = cache_key(fingerprint or teacher_fingerprint(teacher_dir), dataset, max_length)
    directory = Path(cache_root) / key
    if directory.exists() and (refresh or not (directory / "meta.json").is_file()):
        shutil.rmtree(directory, ignore_errors=True)
    if (directory / "meta.json").is_file():
        return TeacherCache.open(directory), False
    meta = {"teacher": str(teacher_dir), "max_length": max_length}
    cache = build_cache(teacher, dataset, directory, device=device, pad_id=pad_id, meta=meta, progress=progress)
    return cache, True
