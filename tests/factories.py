"""Tiny real models and data built inside the tests: no downloads, a few hundred KB, seconds to train.

The vocabulary is small but the model is an ordinary `BertForSequenceClassification` saved as a Hugging
Face directory (config.json, model.safetensors, tokenizer files), exactly what users upload.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

POSITIVE = "good great fine lovely superb wonderful brilliant charming moving delightful".split()  # noqa: SIM905
NEGATIVE = "bad awful dull boring poor terrible weak clumsy tedious messy".split()  # noqa: SIM905
NEUTRAL = (
    "the a movie film plot story actor acting script scene music ending it was is and but very "  # noqa: SIM905
    "quite rather really with of to in this that its so too much some".split()
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + sorted(set(POSITIVE + NEGATIVE + NEUTRAL))
LABELS = ("negative", "positive")


def write_tokenizer(directory: Path) -> BertTokenizerFast:
    """A word-level BERT tokenizer over `VOCAB`, saved into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_bert_config(num_layers: int = 2, hidden: int = 32, labels: tuple[str, ...] = LABELS) -> BertConfig:
    return BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def make_tiny_teacher(
    directory: Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    labels: tuple[str, ...] = LABELS,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised classifier + tokenizer to `directory` (safetensors) and return it."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_layers, hidden, labels))
    model.save_pretrained(str(directory), safe_serialization=True)
    write_tokenizer(directory)
    return directory


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Short labelled sentences whose label is decided by one sentiment word, so tiny models can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        cue = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = rng.sample(NEUTRAL, rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), cue)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
