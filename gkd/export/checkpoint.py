"""The trained student as an ordinary Hugging Face directory, written atomically.

`AutoModelForSequenceClassification.from_pretrained(dir)` loads it; `gkd_card.json` records how it
was made (config, metrics, library versions) so a checkpoint explains itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from gkd.models.vocabulary import PrunedVocabulary, position_pad_id, prune_vocabulary, pruned_model
from gkd.versions import versions

CARD_NAME = "gkd_card.json"


def portable_config(config: Any) -> dict[str, Any]:
    """A `DistillConfig` as a card records it: teacher, data and starting model by their file or directory name,
    without `output_dir` and `cache_dir`, so a downloaded card shows how the student was made and not where a
    machine (a server) keeps its files."""
    data = config.model_dump(mode="json")

    def name(path: str | None) -> str | None:
        return None if path is None else PurePath(path).name or path

    data["teacher"] = name(data["teacher"])
    data["data"] = {**data["data"], **{key: name(data["data"].get(key)) for key in ("train", "dev", "test")}}
    init = data.get("student", {}).get("init")
    if isinstance(init, dict) and isinstance(init.get("model"), str):
        data["student"]["init"] = {**init, "model": name(init["model"])}
    data["run"] = {key: value for key, value in data["run"].items() if key not in ("output_dir", "cache_dir")}
    return data


def export_student(
    model: PreTrainedModel,
    tokenizer: Any,
    labels: list[str],
    directory: str | Path,
    card: dict[str, Any],
    vocabulary: PrunedVocabulary | None = None,
) -> Path:
    """Write config (with label names), model.safetensors, tokenizer files and the card; replace atomically.
    With `vocabulary` (`student.vocabulary: training_data`) a pruned copy of the model is written with the pruned
    tokenizer; `model` itself keeps the full vocabulary and trains on."""
    directory = Path(directory)
    if vocabulary is not None:
        model, tokenizer = pruned_model(model, vocabulary), vocabulary.tokenizer
        card = {**card, "vocabulary": vocabulary.summary()}
    with staged_directory(directory) as tmp:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
        model.config.architectures = [type(model).__name__]
        # Training ran with eager attention for double backward; inference may use the fast kernel.
        model.config._attn_implementation = None
        try:
            with torch.no_grad():
                model.save_pretrained(str(tmp), safe_serialization=True)
        finally:  # training goes on after a 'best' export and needs eager attention, even if saving failed
            model.config._attn_implementation = "eager"
        tokenizer.save_pretrained(str(tmp))
        full_card = {"versions": versions(), **card}
        (tmp / CARD_NAME).write_text(json.dumps(full_card, indent=2, default=str), encoding="utf-8")
    return directory


def prune_exported(source: str | Path, target: str | Path, texts: list[str],
                   pairs: list[str | None] | None = None) -> Path:
    """An exported student written again into `target` with only the tokens of `texts` (the pruning of
    `student.vocabulary: training_data`, after the fact): the same student with and without pruning side by side."""
    model = AutoModelForSequenceClassification.from_pretrained(str(source), use_safetensors=True,
                                                               trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    vocabulary = prune_vocabulary(tokenizer, texts, pairs, keep_through=position_pad_id(model))
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    return export_student(model, tokenizer, labels, target, read_card(source), vocabulary)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target` to build in; it replaces `target` when the block ends, and is removed
    when the block raises, so a reader sees the old directory or the whole new one, never a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing an existing directory with at most a moment of absence."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, target)


def read_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CARD_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
